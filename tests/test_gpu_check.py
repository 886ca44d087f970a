"""The prepared GPU check (scripts/gpu_check.py): its command lines stay valid, a step that fails,
crashes or overruns never takes the others down, and its dry run runs every step on CPU."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddbench.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
STEPS = ["environment", "default-suite", "ensemble-speed", "gradmatch-timing", "mtt-memory", "theory-measure", "ray-executor",
         "reproduce-dc", "reproduce-dsa", "reproduce-dm", "reproduce-mtt"]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


@pytest.mark.parametrize("dry", [False, True], ids=["gpu", "dry-run"])
def test_every_step_is_a_command_line_ddbench_accepts(gpu_check, tmp_path, dry):
    steps = gpu_check.plan(tmp_path, dry)
    assert [s.name for s in steps] == STEPS
    parser = build_parser()
    for step in steps[1:]:
        args = parser.parse_args(step.argv)  # an unknown flag or command exits here (SystemExit 2)
        assert args.device == ("cpu" if dry else "cuda"), step.name
    if not dry:
        assert sum(s.budget_s for s in steps) > gpu_check.TOTAL_S  # the reproductions take the time that is left
        argv = {s.name: " ".join(s.argv) for s in steps}
        assert argv["default-suite"] == f"run --device cuda --store {tmp_path / 'stores' / 'default.sqlite'}"  # the whole suite
        assert "--k 10" in argv["ensemble-speed"] and "--reference --methods dc dsa dm --ipc 1 10" in argv["gradmatch-timing"]
        assert "--d 1024 --r 2 --L 8192 --n 1000000" in argv["theory-measure"] and "--gpus-per-cell 0.25" in argv["ray-executor"]
        assert all(" --iterations" not in argv[f"reproduce-{m}"] for m in ("dc", "dsa", "dm", "mtt"))  # the published length


@pytest.mark.slow
def test_a_failing_crashing_or_overrunning_step_is_recorded_and_the_others_run(gpu_check, tmp_path):
    step = gpu_check.Step

    def crash(path):
        os.kill(os.getpid(), signal.SIGKILL)

    steps = [step("sleeper", "sleeps past its budget", budget_s=1.0, call=lambda path: time.sleep(60) or 0),
             step("crasher", "is killed", call=crash),
             step("bad-input", "bad input", ["run", "--task", "digts", "--budget", "ipc=1"]),
             step("fine", "writes its figures", call=lambda path: path.write_text('{"x": 1}') and 0)]
    records = {}
    start = time.monotonic()
    gpu_check.run_steps(list(enumerate(steps)), tmp_path, time.monotonic() + 60, 2, records.__setitem__)
    assert time.monotonic() - start < 20
    assert records[0]["status"] == "timeout" and 0.9 < records[0]["seconds"] < 15
    assert records[1]["status"] == "crashed (SIGKILL)"
    assert records[2]["status"] == "failed" and records[2]["exit_code"] == 2
    assert records[2]["error"].startswith("ddbench: error: unknown task 'digts'")
    assert records[3]["status"] == "ok" and records[3]["figures"] == {"x": 1}
    late = {}
    gpu_check.run_steps([(0, steps[3])], tmp_path, time.monotonic() + 5, 1, late.__setitem__)  # under MIN_STEP_S left
    assert late[0]["status"] == "not run: no time left"


@pytest.mark.parametrize("argv, expected", [
    (["--jobs", "2"], "--jobs N > 1 is for --dry-run only"),
    (["--dry-run", "--only", "ray"], "unknown step(s) ray in --only: the steps are environment, default-suite"),
    (["--dry-run", "--out", "FILE"], "is a file: pass a folder"),
])
def test_bad_input_is_one_line_exit_2(gpu_check, tmp_path, capsys, argv, expected):
    (tmp_path / "FILE").write_text("keep")
    argv = [a.replace("FILE", str(tmp_path / "FILE")) for a in argv]
    code = gpu_check.main(["--out", str(tmp_path / "out"), *argv] if "--out" not in argv else argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0]
    assert not (tmp_path / "out").exists() and (tmp_path / "FILE").read_text() == "keep"


@pytest.mark.slow
def test_the_dry_run_runs_every_step_on_cpu(tmp_path):
    out = tmp_path / "gpu"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--jobs", "2", "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert [r["step"] for r in report["steps"]] == STEPS and all(r["status"] == "ok" for r in report["steps"])
    for i, name in enumerate(STEPS):
        record = json.loads((out / "steps" / f"{i:02d}-{name}.json").read_text())
        assert record["figures"] and record["command"] and record["seconds"] > 0, name
    figures = {r["step"]: r["figures"] for r in report["steps"]}
    assert figures["environment"]["device"] == "cpu" and figures["environment"]["torch"]
    assert figures["default-suite"]["cells"] == {"ok": 2, "skipped": 0, "failed": 0}  # random on digits, both protocols
    assert figures["theory-measure"]["stages"] and "| method | ipc |" in figures["gradmatch-timing"]["output"]
    assert all("# Reproduction:" in figures[f"reproduce-{m}"]["page"] for m in ("dc", "dsa", "dm", "mtt"))
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# ddbench GPU check (dry run") and "- Device: cpu" in summary
    assert all(f"| {i} | {name} | ok |" in summary for i, name in enumerate(STEPS))
