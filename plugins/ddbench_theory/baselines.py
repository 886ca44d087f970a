"""Reference rows of the theory's table (docs/theory.md §6) that the generic baselines do not cover.

The full-data teacher is the built-in ``full`` distiller and the equal-budget random subset the
built-in ``random`` one (both trained by the two-layer learner in data mode). This module adds the
random-features reference: no first-layer step.
"""
from __future__ import annotations

from ddbench.contracts.deviations import Deviation
from ddbench.contracts.interfaces import Artifact, Distiller, Learner, RunContext, TaskView
from ddbench.vocab import Budget
from ddbench_theory.distiller import NO_CODE


class RandomFeatures(Distiller):
    """All n real points, trained with W = W0 (unit rows), re-initialised biases and the ridge head:
    the kernel regime without feature learning (docs/theory.md §6, claim 4). A reference row, not
    budget-bound; stores n (d + 1) scalars like ``full``. Reconstruction (see docs/theory.md)."""

    name = "random-features"
    description = "reference: two-layer net without the first-layer step (random ReLU features + ridge) on all data"
    budget_exempt = True
    official_code = f"{NO_CODE}: its random-features baseline, docs/theory.md §6"
    deviations = (
        Deviation("θ₀ and re-drawn biases", "the student's (same seeds, same θ₀)", "each evaluation net's own, from its seed",
                  "ours: it stores no init seed, so its row is a mean over random features"),
    )

    def supports(self, task: TaskView, learner: Learner) -> str | None:
        if task.kind != "regression" or len(task.input_shape) != 1:
            return "random-features is the two-layer learner's kernel baseline: regression tasks with vector inputs only"
        return None

    def distill(self, task: TaskView, budget: Budget | None, learner: Learner, context: RunContext) -> Artifact:
        return Artifact({"x": task.train.x, "y": task.train.y}, recipe={"options": {"first_layer": "random"}})
