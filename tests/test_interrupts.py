"""Killing or interrupting ``ddbench run`` loses no finished cell and leaves no worker behind."""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ddbench.results.store import ResultStore

TESTS = Path(__file__).resolve().parent
RUN_WITH_ADVERSARIAL = (  # `ddbench run ARGS` with the adversarial plugin registered in code, Ctrl-C handled as in a
    # terminal's foreground job (a job started with `&` by a shell without job control, CI's maybe, inherits it ignored)
    "import signal, sys, adversarial; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from ddbench.plugins import get_plugin_manager; "
    "get_plugin_manager().add(adversarial, 'adversarial'); from ddbench.cli import main; sys.exit(main(sys.argv[1:]))"
)


def start(args: list[str], cwd: Path, marker: str) -> subprocess.Popen:
    """``ddbench run`` in its own session (as a terminal's foreground job), its processes marked in the environment."""
    env = {**os.environ, "DDBENCH_TEST_MARKER": marker, "PYTHONFAULTHANDLER": "1", "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", RUN_WITH_ADVERSARIAL, "run", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def marked(marker: str) -> list[int]:
    """Processes whose environment carries ``marker`` (the run, its fork server and its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"DDBENCH_TEST_MARKER={marker}".encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def parent_of(pid: int) -> int:
    """The parent process id of ``pid`` (Linux /proc); -1 once it has gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def grandchildren(pid: int, marker: str) -> list[int]:
    """The marked processes whose parent is a child of ``pid``: the cell workers its fork server started."""
    children = {p for p in marked(marker) if parent_of(p) == pid}
    return [p for p in marked(marker) if parent_of(p) in children]


def wait_until_gone(marker: str, seconds: float = 10.0) -> list[int]:
    deadline = time.time() + seconds
    while marked(marker) and time.time() < deadline:
        time.sleep(0.1)
    return marked(marker)


def stored(db: Path) -> dict[str, str]:
    """key -> finished_at of the store's rows (empty when the store does not exist yet)."""
    if not db.exists():
        return {}
    with sqlite3.connect(db, timeout=30) as con:
        if not con.execute("SELECT name FROM sqlite_master WHERE name = 'cells'").fetchone():
            return {}
        return dict(con.execute("SELECT key, finished_at FROM cells"))


def reported(stderr: str) -> set[str]:
    """Labels of the cells the run reported finished ('digits / first / ipc=2 / seed 0')."""
    return {line.split(":")[0] for line in stderr.splitlines() if line.startswith("digits / ") and ": accuracy" in line}


pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find worker processes")


@pytest.mark.slow  # 5-6 s: a finished cell, then Ctrl-C; the fast lane's kill test below checks no worker outlives the run
def test_ctrl_c_stops_the_run_cleanly_and_keeps_finished_cells(tmp_path):
    marker, db = uuid.uuid4().hex, tmp_path / "r.sqlite"
    proc = start(["--store", str(db), "--task", "digits", "--budget", "ipc=1", "--distiller", "first",
                  "--distiller", "misbehave:mode=sleep,seconds=120", "--device", "cpu", "--executor", "local:workers=1"],
                 tmp_path, marker)  # one cell at a time: the sleeping cell's worker is the run's fork server's child
    deadline = time.time() + 60
    while not stored(db) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    while not grandchildren(proc.pid, marker) and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None and grandchildren(proc.pid, marker)  # the sleeping cell's worker runs
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # show where the run hangs: SIGABRT makes faulthandler print every thread's stack
        proc.send_signal(signal.SIGABRT)
        stacks = proc.communicate(timeout=30)[1].split("Extension modules")[0]
        pytest.fail(f"the run was still running 30 s after Ctrl-C:\n{stacks[-8000:]}")
    assert proc.returncode == 130, err
    assert f"ddbench: interrupted; every finished cell is kept in {db}, and a rerun skips them." in err and "Traceback" not in err
    assert not wait_until_gone(marker), "a worker outlived the interrupted run"
    store = ResultStore(db, create=False)
    assert [(r["config"]["distiller"], r["status"]) for r in store.records()] == [("first", "ok")]


@pytest.mark.slow
def test_a_killed_run_leaves_no_worker_running(tmp_path):
    marker = uuid.uuid4().hex
    proc = start(["--store", str(tmp_path / "r.sqlite"), "--task", "digits", "--budget", "ipc=1",
                  "--distiller", "misbehave:mode=sleep,seconds=120", "--device", "cpu"], tmp_path, marker)
    deadline = time.time() + 60
    while not grandchildren(proc.pid, marker) and time.time() < deadline:
        time.sleep(0.1)
    assert grandchildren(proc.pid, marker), "the sleeping cell's worker never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)  # a worker that outlives the run holds its output pipes open
    assert not wait_until_gone(marker), "the distiller's worker or its fork server outlived the killed run"


@pytest.mark.slow
def test_ten_sigkills_at_random_moments_lose_no_finished_cell(tmp_path):
    db = tmp_path / "r.sqlite"
    args = ["--store", str(db), "--task", "digits", "--distiller", "first", "--distiller", "random", "--device", "cpu",
            "--seeds", "1", *[f"--budget=ipc={i}" for i in range(1, 7)]]
    rng = random.Random(0)
    seen: dict[str, str] = {}
    for attempt in range(10):
        marker = uuid.uuid4().hex
        proc = start(args, tmp_path, marker)
        time.sleep(rng.uniform(0.5, 6.0))
        os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        assert not wait_until_gone(marker), f"attempt {attempt}: a worker outlived the killed run"
        with ResultStore(db) as store:
            assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            now = {r["key"]: r["finished_at"] for r in store.records()}
            labels = {f"digits / {r['config']['distiller']} / {r['config']['budget']} / seed 0" for r in store.records()}
        assert {k: now[k] for k in seen} == seen, f"attempt {attempt}: a finished cell was lost or recomputed"
        assert reported(err) <= labels, f"attempt {attempt}: a cell reported finished is not in the store"
        seen = now
    final = subprocess.run([sys.executable, "-c", RUN_WITH_ADVERSARIAL, "run", *args], cwd=tmp_path, text=True,
                           capture_output=True, env={**os.environ, "PYTHONPATH": str(TESTS)})
    assert final.returncode == 0, final.stderr
    assert f"({len(seen)} reused)" in final.stderr
    with ResultStore(db) as store:
        records = store.records()
    assert len(records) == 12 and all(r["status"] == "ok" for r in records)
    assert {k: v for k, v in ((r["key"], r["finished_at"]) for r in records) if k in seen} == seen
