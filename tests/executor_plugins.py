"""Test components for the executors (tests/test_executors.py): a distiller that kills the Ray
worker running its cell, ``kills`` times, then distils honestly. At module level, importable by
Ray workers (the tests put this folder on their PYTHONPATH)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

from adversarial import FAST, first_per_class
from ddbench import Artifact, Distiller, hookimpl


def parent_of(pid: int) -> int:
    """The parent process id of ``pid`` (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


class KillWorker(Distiller):
    """Appends a line to ``marker`` per attempt; the first ``kills`` attempts SIGKILL the process
    that runs the cell's harness (the cell worker's fork server's parent: under the ray executor,
    the Ray worker), as an out-of-memory killer or a lost node would. ``fail``: raise instead of
    returning an artifact (a plugin bug)."""

    name = "kill-worker"

    def __init__(self, marker: str = "", kills: int = 1, fail: bool = False):
        self.marker, self.kills, self.fail = Path(marker), kills, fail

    def distill(self, task, budget, learner, context):
        with self.marker.open("a") as f:
            f.write("attempt\n")
        if len(self.marker.read_text().splitlines()) <= self.kills:
            os.kill(parent_of(os.getppid()), signal.SIGKILL)
            signal.pause()  # the kernel ends this worker with its parents
        if self.fail:
            raise RuntimeError("a bug in the plugin")
        x, y = first_per_class(task, budget)
        return Artifact({"x": x, "y": y}, recipe=FAST)


@hookimpl
def ddbench_register_distillers(register) -> None:
    register(KillWorker)
