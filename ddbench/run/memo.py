"""Evaluations trained once per run: an evaluation identical to an earlier one takes its results.

An evaluation is a function of its key (the artifact's content, the recipe, the learner, the
seeds, the task; :meth:`ddbench.run.harness.Harness._scores`), so within one run a common cell
whose method declares the common recipe, or a random subset already trained as a reference, takes
the earlier results instead of training again. The cell hosts of a run (:mod:`ddbench.run.local`)
share them through a folder of the run: a host that needs an evaluation another host is training
waits for it, and one whose trainer died trains it itself. The folder holds JSON only.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

Evaluation = tuple[list[dict[str, float]], str, int, float]  # scores per net, how they trained, params of one net, seconds
POLL_S = 0.1


class EvaluationMemo:
    """The evaluations of one run, by key; with ``folder``, shared with the other processes given it."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder
        self._known: dict[str, Evaluation] = {}

    def clear(self) -> None:
        """Forget this process's evaluations (a new run trains its nets again)."""
        self._known.clear()

    def recall(self, key: str, train: Callable[[], Evaluation]) -> tuple[Evaluation, bool]:
        """The evaluation of ``key`` and whether it was reused: known here, done by another process,
        or trained now by ``train``."""
        if key in self._known:
            return self._known[key], True
        if self.folder is None:
            self._known[key] = train()
            return self._known[key], False
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        done, claim = self.folder / f"{name}.json", self.folder / f"{name}.claim"
        while not done.exists():
            try:
                fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if _holder_alive(claim):
                    time.sleep(POLL_S)
                    continue
                return self._train(key, train, done, None), False  # its trainer died: train it here
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            return self._train(key, train, done, claim), False
        data = json.loads(done.read_text())
        if data["key"] != key:
            return self._train(key, train, None, None), False
        self._known[key] = (data["scores"], data["mode"], data["params"], data["seconds"])
        return self._known[key], True

    def _train(self, key: str, train: Callable[[], Evaluation], done: Path | None, claim: Path | None) -> Evaluation:
        try:
            value = self._known[key] = train()
            if done is not None:
                scores, mode, params, seconds = value
                part = done.with_suffix(f".{os.getpid()}.part")
                part.write_text(json.dumps({"key": key, "scores": scores, "mode": mode, "params": params, "seconds": seconds}))
                os.replace(part, done)
            return value
        finally:
            if claim is not None:
                claim.unlink(missing_ok=True)


def _holder_alive(claim: Path) -> bool:
    """Whether the process that claimed an evaluation still runs (a claim without its pid yet: yes)."""
    try:
        pid = int(claim.read_text() or 0)
    except FileNotFoundError:
        return True  # released just now: its result is there
    except ValueError:
        return False
    if not pid:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
