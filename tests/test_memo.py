"""The run's evaluation memo (ddbench.run.memo): trained once per key, shared through a folder."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from ddbench.run.memo import EvaluationMemo

EVALUATION = ([{"accuracy": 61.25}, {"accuracy": 0.1 + 0.2}], "ensemble", 650, 1.5)


def counting():
    calls = []

    def train():
        calls.append(1)
        return EVALUATION

    return train, calls


def test_an_evaluation_is_trained_once_per_key_and_shared_through_the_folder(tmp_path):
    train, calls = counting()
    first, second = EvaluationMemo(tmp_path), EvaluationMemo(tmp_path)
    assert first.recall("k", train) == (EVALUATION, False)
    assert first.recall("k", train) == (EVALUATION, True)
    assert second.recall("k", train) == (EVALUATION, True)  # another host: read back exactly (floats included)
    assert len(calls) == 1 and [p.suffix for p in tmp_path.iterdir()] == [".json"]  # the claim is released
    assert EvaluationMemo().recall("k", train) == (EVALUATION, False)  # no folder: this process only
    first.clear()
    assert first.recall("other", train)[1] is False and len(calls) == 3


def test_a_host_waits_for_an_evaluation_another_is_training(tmp_path):
    train, calls = counting()
    memo = EvaluationMemo(tmp_path)
    name = digest("k")
    (tmp_path / f"{name}.claim").write_text(str(os.getpid()))  # a live trainer: this process

    def finish():
        time.sleep(0.3)
        (tmp_path / f"{name}.json").write_text(json.dumps({"key": "k", "scores": EVALUATION[0], "mode": "ensemble",
                                                           "params": 650, "seconds": 1.5}))
    threading.Thread(target=finish).start()
    assert memo.recall("k", train) == (EVALUATION, True) and not calls


def test_an_evaluation_whose_trainer_died_or_failed_is_trained_here(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = digest("k")
    (tmp_path / f"{name}.claim").write_text(str(dead.pid))
    train, calls = counting()
    assert EvaluationMemo(tmp_path).recall("k", train) == (EVALUATION, False) and calls == [1]

    def broken():
        raise RuntimeError("a bug")
    with pytest.raises(RuntimeError):
        EvaluationMemo(tmp_path).recall("other", broken)
    assert not list(tmp_path.glob("*.claim")) or all(p.read_text() == str(dead.pid) for p in tmp_path.glob("*.claim"))
    assert EvaluationMemo(tmp_path).recall("other", train) == (EVALUATION, False)


def digest(key: str) -> str:
    """The file name of ``key``'s evaluation in the folder."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]
