"""Test distillers for checkpoints (tests/test_resume.py): one that kills its own cell worker right
after a checkpoint, as a preempted job, and two that declare ``resumable`` without keeping their
word, for the conformance kit to catch. At module level, importable by cell workers."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import torch

from adversarial import FAST, First, first_per_class
from ddbench import Artifact, Distiller, hookimpl


class Walk(Distiller):
    """The first ``ipc`` images per class, moved by ``steps`` random steps, checkpointed at every
    step offered; the attempt that finds no ``marker`` file creates it and SIGKILLs its own worker
    right after the checkpoint of step ``die_at`` (0: never)."""

    name = "walk"
    resumable = True

    def __init__(self, steps: int = 6, die_at: int = 0, marker: str = ""):
        self.steps, self.die_at, self.marker = steps, die_at, Path(marker)

    def distill(self, task, budget, learner, context):
        x, y = first_per_class(task, budget)
        ckpt = context.checkpointer(x=x, generator=context.generator)
        done, saved = ckpt.restore()
        trail = list(saved.get("trail", []))
        while done < self.steps:
            x.add_(0.01 * torch.randn(x.shape, generator=context.generator, device=x.device))
            done += 1
            trail.append(float(x.sum()))
            context.progress.update(done, self.steps)
            if ckpt.step(done, trail=trail) and done == self.die_at and not self.marker.exists():
                self.marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
        return Artifact({"x": x, "y": y}, recipe=FAST, meta={"trail": trail, "iterations": done})


class Forgetful(Walk):
    """Declares ``resumable`` but keeps its generator out of the checkpoint: a resumed run draws other steps."""

    name = "forgetful"

    def distill(self, task, budget, learner, context):
        x, y = first_per_class(task, budget)
        ckpt = context.checkpointer(x=x)
        done, _ = ckpt.restore()
        while done < self.steps:
            x.add_(0.01 * torch.randn(x.shape, generator=context.generator, device=x.device))
            done += 1
            context.progress.update(done, self.steps)
            ckpt.step(done)
        return Artifact({"x": x, "y": y}, recipe=FAST)


class Silent(First):
    """Declares ``resumable`` but never offers a checkpoint: ``first``'s distillation."""

    name = "silent"
    resumable = True


@hookimpl
def ddbench_register_distillers(register) -> None:
    register(Walk)
