"""`ddbench new-plugin NAME`: the generated package is complete, its distiller passes the
conformance kit and registers through its hook; bad names and folders are one-line errors.
(CI also pip-installs a fresh scaffold and runs its generated tests: see .ci/run.)"""
from __future__ import annotations

import importlib
import sys

import pytest

from ddbench.cli import main
from ddbench.plugins import PluginManager
from ddbench.testing import check_distiller
from ddbench.testing.scaffold import PluginNames, ScaffoldError, write_plugin

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytest_plugins = ["pytester"]

FILES = ["README.md", "pyproject.toml", "src/ddbench_kernel_herd/__init__.py", "src/ddbench_kernel_herd/distiller.py",
         "tests/test_ddbench_kernel_herd.py"]


@pytest.fixture
def scaffold(tmp_path, monkeypatch):
    """A fresh `kernel-herd` package, importable from its src/ folder."""
    root = write_plugin("kernel-herd", tmp_path)
    monkeypatch.syspath_prepend(str(root / "src"))
    yield root
    for name in [m for m in sys.modules if m.startswith("ddbench_kernel_herd")]:
        del sys.modules[name]


def test_names_follow_the_plugin_name():
    assert PluginNames.of("kernel-herd") == PluginNames("kernel-herd", "ddbench-kernel-herd", "ddbench_kernel_herd", "KernelHerd")


def test_scaffold_files_and_entry_point(scaffold):
    assert sorted(p.relative_to(scaffold).as_posix() for p in scaffold.rglob("*") if p.is_file()) == FILES
    project = tomllib.loads((scaffold / "pyproject.toml").read_text())
    assert project["project"]["name"] == "ddbench-kernel-herd"
    assert project["project"]["entry-points"]["ddbench"] == {"kernel-herd": "ddbench_kernel_herd"}
    assert "pip install -e" in (scaffold / "README.md").read_text()
    for path in scaffold.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")  # every generated module is valid Python


def test_scaffold_distiller_registers_and_passes_the_kit(scaffold):
    plugin = importlib.import_module("ddbench_kernel_herd")
    manager = PluginManager()
    manager.add(plugin, "kernel-herd")
    cls = manager.distillers.get("kernel-herd")
    assert cls.__name__ == "KernelHerd" and manager.plugins["kernel-herd"].registered["distiller"] == ["kernel-herd"]
    report = check_distiller(cls)
    assert [c.status for c in report.cases] == ["ok"] * 5


def test_generated_conformance_test_passes(scaffold, pytester):
    pytester.makepyfile(test_generated=(scaffold / "tests/test_ddbench_kernel_herd.py").read_text())
    result = pytester.runpytest_inprocess("-k", "conformance", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, deselected=1)


def test_cli_writes_the_package(capsys, tmp_path):
    assert main(["new-plugin", "kernel-herd", "--dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "ddbench-kernel-herd")
    assert f"pip install -e {tmp_path / 'ddbench-kernel-herd'}" in err


@pytest.mark.parametrize("name, expected", [
    ("Kernel_Herd", "plugin name 'Kernel_Herd' is not valid: use lower-case letters and digits in words joined by '-'"),
    ("2fast", "plugin name '2fast' is not valid"),
    ("random", "distiller name 'random' is already registered by an installed plugin: choose another name."),
])
def test_cli_rejects_bad_names(capsys, tmp_path, name, expected):
    assert main(["new-plugin", name, "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ddbench: error: {expected}") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_existing_folder_is_not_overwritten(tmp_path):
    (tmp_path / "ddbench-kernel-herd").mkdir()
    with pytest.raises(ScaffoldError, match="ddbench-kernel-herd' already exists: remove it or pass another --dir."):
        write_plugin("kernel-herd", tmp_path)
