"""The results store survives SIGKILL and concurrent writers; artifacts are safetensors, never pickle."""
from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

import store_writer
from ddbench import Artifact
from ddbench.budget.artifact import load, save
from ddbench.errors import ArtifactError
from ddbench.results.records import Cell, CellResult, result_from_dict, result_to_dict
from ddbench.results.store import ResultStore
from store_writer import fake_result

SUITE = """
name = "kill-test"
profile = "quick"
eval_seeds = 1
[[task]]
name = "digits"
budgets = ["ipc=1", "ipc=2", "ipc=3", "ipc=4", "ipc=5", "ipc=6"]
[[distiller]]
name = "random"
"""


def test_result_round_trip(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    result = fake_result(0)
    result.random_ref, result.extra = 80.0, {"mse": 0.5}
    store.put(result, "s")
    (record,) = store.records()
    again = result_from_dict(record)
    assert result_to_dict(again) == result_to_dict(result) and again.gain == pytest.approx(10.0)
    assert store.done(result.cell) and record["provenance"]["ddbench"]
    result.status = "failed"
    store.put(result)
    assert not store.done(result.cell) and len(store.records()) == 1  # failed cells rerun, replaced in place


def test_the_protocol_and_the_model_count_round_trip_and_keep_cells_apart(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    native = fake_result(0)
    native.model_params = 1234
    common = CellResult(Cell(**{**native.cell.__dict__, "protocol": "common"}), "ok", "accuracy", [91.0], model_params=1234)
    store.put(native)
    assert not store.done(common.cell)  # the other protocol is another cell
    store.put(common)
    records = store.records()
    assert sorted(r["config"]["protocol"] for r in records) == ["common", "native"]
    assert {result_from_dict(r).cell.protocol for r in records} == {"native", "common"}
    assert all(r["model_params"] == 1234 and result_to_dict(result_from_dict(r))["model_params"] == 1234 for r in records)


@pytest.mark.slow
def test_sigkill_mid_suite_loses_nothing(tmp_path):
    suite, db = tmp_path / "suite.toml", tmp_path / "results.sqlite"
    suite.write_text(SUITE)
    cmd = [sys.executable, "-m", "ddbench.cli", "run", "--suite", str(suite), "--store", str(db), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.time() + 120
    finished = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            with sqlite3.connect(db, timeout=30) as con:
                finished = con.execute("SELECT count(*) FROM cells").fetchone()[0] if con.execute(
                    "SELECT name FROM sqlite_master WHERE name='cells'").fetchone() else 0
            if finished >= 2:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = ResultStore(db)
    before = {r["key"]: r["finished_at"] for r in store.records()}
    assert 2 <= len(before) < 6
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.close()
    rerun = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert f"({len(before)} reused)" in rerun.stderr
    store = ResultStore(db)
    after = store.records()
    assert len(after) == 6 and len({r["key"] for r in after}) == 6
    assert all(r["status"] == "ok" for r in after)
    assert {r["key"]: r["finished_at"] for r in after if r["key"] in before} == before  # not recomputed


def test_concurrent_writers_do_not_corrupt(tmp_path):
    path = str(tmp_path / "r.sqlite")
    ResultStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=store_writer.write, args=(path, k * 1000, 60)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    store = ResultStore(path)
    assert len(store.records()) == 120
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_artifacts_are_safetensors_with_a_hashed_sidecar(tmp_path):
    art = Artifact({"x": torch.randn(4, 1, 8, 8), "y": torch.arange(4), "lr": torch.tensor(0.01)}, {"augment": "dsa"}, {"loss": [1.0]})
    path = save(art, tmp_path / "a", {"task": "digits"})
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    again = load(path)
    assert all(torch.equal(art.tensors[k], again.tensors[k]) for k in art.tensors) and again.recipe == {"augment": "dsa"}
    torch.save({"x": torch.zeros(1)}, tmp_path / "evil.pt")
    with pytest.raises(ArtifactError, match="refusing to load 'evil.pt': pickle"):
        load(tmp_path / "evil.pt")
    (tmp_path / "disguised.safetensors").write_bytes((tmp_path / "evil.pt").read_bytes())
    with pytest.raises(ArtifactError, match="not a safetensors file"):
        load(tmp_path / "disguised.safetensors")
    save(Artifact({"x": torch.zeros(4, 1, 8, 8)}), tmp_path / "b")
    (tmp_path / "a.json").replace(tmp_path / "b.json")
    with pytest.raises(ArtifactError, match="does not match the hash"):
        load(tmp_path / "b.safetensors")


def test_provenance_commit_can_be_named_by_the_environment(monkeypatch):
    from ddbench.results.provenance import git_commit, provenance

    git_commit.cache_clear()
    monkeypatch.setenv("DDBENCH_COMMIT", "abc123def456")
    try:
        assert provenance()["commit"] == "abc123def456"
    finally:
        git_commit.cache_clear()
