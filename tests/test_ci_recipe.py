"""docs/ci.md's workflow, run as written on the example plugin: its shell commands are read from the
page's YAML block and run in a copy of the example's ``ci/`` folder (suite and committed baseline).

Like tests/test_example_plugin.py it needs the example installed (CI installs it and sets
DDBENCH_REQUIRE_EXAMPLE=1, which turns the skip into a failure); the workflow's install step is
the one command not run here, and the test checks that it installs exactly torch, ddbench and the plugin.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_example_plugin import example_installed  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ddbench-example-plugin"


def recipe() -> list[str]:
    """The shell commands of docs/ci.md's workflow, in order (``run: CMD`` and ``run: |`` blocks)."""
    [yaml] = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "ci.md").read_text(), re.S)
    commands: list[str] = []
    block: int | None = None
    for line in yaml.splitlines():
        if block is not None and line.startswith(" " * block) and line.strip():
            commands.append(line.strip())
            continue
        block = None
        found = re.match(r"^(\s*)(?:- )?run: (.*)$", line)
        if found and found[2] == "|":
            block = len(found[1]) + 2
        elif found:
            commands.append(found[2])
    return commands


def test_the_recipe_installs_torch_ddbench_and_the_plugin_then_runs_ddbench():
    install = [c for c in recipe() if c.startswith("python -m pip install")]
    assert install == ["python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu",
                       'python -m pip install "$DDBENCH"', "python -m pip install -e ."]
    assert [c.split()[:2] for c in recipe() if c not in install] == [["ddbench", "run"], ["ddbench", "compare"], ["ddbench", "leaderboard"]]


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_recipe_runs_on_the_example_plugin(example_installed, tmp_path):  # noqa: F811 - the fixture is imported under its own name
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE / "ci", repo / "ci")
    steps = [c for c in recipe() if not c.startswith("python -m pip install")]
    for command in steps:
        done = shell(command, repo)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        if command.startswith("ddbench compare"):
            assert "95% interval" in done.stdout and "| class-means " in done.stdout and "REGRESSION" not in done.stdout
    page = (repo / "site" / "digits.html").read_text()
    assert (repo / "site" / "index.html").is_file() and 'data-distiller="class-means"' in page

    baseline = repo / "ci" / "baseline" / "results.json"  # a baseline 6 points better: the same run now regresses
    records = json.loads(baseline.read_text())
    for r in records:
        if r["config"]["distiller"] == "class-means" and r["config"]["budget"] == "ipc=1":
            r["values"] = [v + 6.0 for v in r["values"]]
    baseline.write_text(json.dumps(records))
    [compare] = [c for c in steps if c.startswith("ddbench compare")]
    done = shell(compare, repo)
    assert done.returncode == 1 and next(l for l in done.stdout.splitlines() if "REGRESSION" in l).startswith("| digits | class-means")
