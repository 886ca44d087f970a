"""The example third-party plugin (examples/ddbench-example-plugin), end to end through the CLI:
listed by `ddbench plugins` and `ddbench ls distillers`, run in a suite, present in a leaderboard.

It needs the example installed (`pip install -e examples/ddbench-example-plugin`); a developer venv
may not have it, so the test skips then. CI installs it and sets DDBENCH_REQUIRE_EXAMPLE=1, which
turns the skip into a failure.
"""
from __future__ import annotations

import csv
import os

import pytest

from ddbench.cli import main
from ddbench.plugins import get_plugin_manager

REQUIRE_ENV = "DDBENCH_REQUIRE_EXAMPLE"


@pytest.fixture
def example_installed(manager):
    if "class-means" not in manager.names("distiller"):
        reason = "the example plugin is not installed: pip install --no-deps -e examples/ddbench-example-plugin"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)


@pytest.mark.slow
def test_example_plugin_runs_in_a_suite_and_reaches_the_leaderboard(example_installed, capsys, tmp_path):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "ddbench-example-plugin (entry point ddbench_example)" in out and "distillers: class-means" in out
    assert main(["ls", "distillers"]) == 0
    assert "| class-means " in capsys.readouterr().out
    assert get_plugin_manager().owner("distiller", "class-means") == "example"

    suite = tmp_path / "example.toml"
    suite.write_text('name = "example"\neval_seeds = 1\n[[task]]\nname = "digits"\nbudgets = ["ipc=1"]\n'
                     '[[distiller]]\nname = "class-means"\n[[distiller]]\nname = "random"\n')
    store, out_dir = tmp_path / "results.sqlite", tmp_path / "leaderboards"
    assert main(["run", "--suite", str(suite), "--store", str(store), "--device", "cpu"]) == 0
    assert main(["leaderboard", "--store", str(store), "--out", str(out_dir)]) == 0
    capsys.readouterr()
    rows = {r["distiller"]: r for r in csv.DictReader((out_dir / "digits.csv").open())}
    assert rows["class-means"]["status"] == "ok" and rows["class-means"]["budget"] == "ipc=1"
    assert int(float(rows["class-means"]["stored_params"])) == 10 * (64 + 1)
    assert float(rows["class-means"]["mean"]) > 20.0  # class means of digits beat chance (10 %) by far
    assert "class-means" in (out_dir / "digits.md").read_text()
