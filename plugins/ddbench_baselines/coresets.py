"""Coreset baselines (``docs/methods.md`` §9): real examples chosen, not synthesised."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ddbench.budget.labels import teacher_tensors
from ddbench.contracts import options
from ddbench.contracts.deviations import Deviation
from ddbench.contracts.interfaces import Artifact, Distiller, Learner, RunContext, TaskView
from ddbench.contracts.recipe import Recipe
from ddbench.ops.subsets import random_subset
from ddbench.ops.teacher import QUICK_TEACHER, SQUEEZE_AUGMENTS, SQUEEZE_EPOCHS, SQUEEZE_MAPPED, TEACHER, teacher_for
from ddbench.vocab import Budget

LABEL_FORMS = ("hard", "teacher")
DC_CODE = "VICO-UoE/DatasetCondensation @ 53f63a6"
TEACHER_LABELS = Deviation("labels", "the chosen images with their hard labels",
                           "the chosen images with a stored teacher the student distils from (docs/labels.md)",
                           "ours: the coreset reference row of the teacher regime, beside sre2l and dwa", "labels=teacher")


class Coreset(Distiller):
    """A coreset in a label regime (docs/labels.md): ``labels='hard'`` stores the examples' labels;
    ``'teacher'`` stores the examples with a teacher (``teacher``, squeezed for ``squeeze_epochs``
    with ``squeeze_augment``, cached and shared with sre2l and dwa, or read from the checkpoint file
    ``teacher_weights``), which the student distils from. It reads the train split through the
    accessor (:attr:`~ddbench.contracts.interfaces.Distiller.reads_mapped`)."""

    quick: ClassVar[dict[str, Any]] = dict(QUICK_TEACHER)
    reads_mapped = True

    def __init__(self, labels: str = "hard", teacher: str = TEACHER, squeeze_epochs: int = SQUEEZE_EPOCHS,
                 squeeze_augment: str = "crop", teacher_weights: str = ""):
        options.one_of("labels", labels, LABEL_FORMS)
        options.one_of("squeeze_augment", squeeze_augment, SQUEEZE_AUGMENTS)
        options.positive(squeeze_epochs=squeeze_epochs)
        self.labels, self.teacher, self.squeeze_epochs, self.squeeze_augment = labels, teacher, squeeze_epochs, squeeze_augment
        self.teacher_weights = teacher_weights

    def teacher_reason(self, task: TaskView) -> str | None:
        """Why the teacher regime does not apply to ``task`` (``None``: it does)."""
        if self.labels == "teacher" and task.num_classes is None:
            return "a teacher gives class probabilities; the task is regression"
        if self.labels == "teacher" and task.train.mapped and not self.teacher_weights:
            return SQUEEZE_MAPPED
        return None

    def artifact(self, task: TaskView, index: Tensor, context: RunContext, meta: dict[str, Any] | None = None) -> Artifact:
        """The chosen examples (class by class) in this coreset's label regime."""
        meta = dict(meta or {})
        if self.labels == "hard":
            return Artifact({"x": task.train.take(index).clone(), "y": task.train.y[index].clone()}, meta=meta)
        model, info = teacher_for(task, self.teacher, self.squeeze_epochs, self.squeeze_augment, context, self.teacher_weights)
        return Artifact({"x": task.train.take(index).clone(), **teacher_tensors(model)},
                        {"labels": "class-balanced", "teacher": self.teacher}, {**meta, **info})


class Random(Coreset):
    """Class-balanced random real subset (uniform, seeded); the reference for "gain vs random"."""

    name = "random"
    description = "random real subset: ipc per class (or params / (input+1) points); labels=teacher adds a stored teacher"
    official_code = f"{DC_CODE}, `CL_DM.py --method random` (`get_images`): ipc images per class, uniform without replacement"
    deviations = (TEACHER_LABELS,)

    def supports(self, task: TaskView, learner: Learner) -> str | None:
        return self.teacher_reason(task)

    def distill(self, task: TaskView, budget: Budget, learner: Learner, context: RunContext) -> Artifact:
        idx = random_subset(task, budget, context.generator)
        context.progress.update(1, 1)
        return self.artifact(task, idx, context)


class Full(Distiller):
    """The whole train split: a reference row, not bound by the budget.

    ``epochs`` (optional) overrides the evaluation recipe's E: the full split takes far more steps
    per epoch than a distilled set, so the CPU ``quick`` profile trains it for 20 epochs.
    """

    name = "full"
    description = "the whole train split (reference row, not budget-limited)"
    budget_exempt = True
    quick: ClassVar[dict[str, Any]] = {"epochs": 20}
    official_code = "no method code: the whole train split, as the papers' full-data rows train on it"
    deviations = (
        Deviation("data", "the whole train split", "the train split less ddbench's stratified validation carve-out",
                  "ours: every choice is made on validation, never on test (docs/methods.md §3)"),
        Deviation("epochs", "the task's evaluation recipe (its E)", "E = `epochs` (quick profile: 20)",
                  "ours: the full split takes far more steps per epoch than a distilled set; CPU time", "epochs!=None"),
    )

    def __init__(self, epochs: int | None = None):
        self.epochs = epochs

    def distill(self, task: TaskView, budget: Budget | None, learner: Learner, context: RunContext) -> Artifact:
        recipe = {} if self.epochs is None else {"epochs": self.epochs}
        context.progress.update(1, 1)
        return Artifact({"x": task.train.x, "y": task.train.y}, recipe=recipe)


def herding_select(features: Tensor, k: int) -> Tensor:
    """Greedy herding (Welling 2009): repeatedly add the example that brings the running mean of
    the selected features closest to the mean of all ``features``. Returns ``k`` indices."""
    target = features.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(target)
    available = torch.ones(len(features), dtype=torch.bool, device=features.device)
    for step in range(min(k, len(features))):
        dist = ((target - (total + features) / (step + 1)) ** 2).sum(1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        total = total + features[i]
    return torch.tensor(chosen, device=features.device, dtype=torch.long)


class Herding(Coreset):
    """Herding coreset in the learner's penultimate-feature space (§9; DC paper, iCaRL).

    ``features='trained'`` (default, as §9): the learner is first trained on the full train split
    for ``epochs`` (the task's recipe otherwise); ``'random'``: a randomly initialised learner.
    """

    name = "herding"
    description = "greedy feature-mean matching (herding) coreset in the learner's embedding"
    quick: ClassVar[dict[str, Any]] = {**Coreset.quick, "epochs": 5}
    official_code = (f"{DC_CODE} has no herding code (`CL_DM.py --method herding` loads precomputed sets); compared with "
                     "the DC paper's baseline as docs/methods.md §9 describes it")
    deviations = (
        Deviation("feature network", "ConvNet-3", "the cell's learner (its penultimate features; ConvNet-3 on the image boards)",
                  "ours: selection in the space of the model the row is evaluated with"),
        Deviation("feature network's training", "trained on the whole train split (recipe not released)",
                  "E = `epochs` (30; quick profile 5) of SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256, "
                  "one x0.1 decay, no augmentation", "ours: no released recipe; CPU time", "features=trained"),
        Deviation("feature network's training", "trained on the whole train split", "none: a randomly initialised learner",
                  "ours: an option separating the selection from feature learning", "features=random"),
        TEACHER_LABELS,
    )

    def __init__(self, features: str = "trained", epochs: int = 30, labels: str = "hard", teacher: str = TEACHER,
                 squeeze_epochs: int = SQUEEZE_EPOCHS, squeeze_augment: str = "crop", teacher_weights: str = ""):
        options.one_of("features", features, ("trained", "random"))
        options.non_negative(epochs=epochs)
        super().__init__(labels, teacher, squeeze_epochs, squeeze_augment, teacher_weights)
        self.features, self.epochs = features, epochs

    def supports(self, task: TaskView, learner: Learner) -> str | None:
        if task.num_classes is None:
            return "herding selects per class; the task is regression"
        if not learner.supports_embedding:
            return f"herding selects in a learner's feature space; {learner.name!r} has no embedding (supports_embedding)"
        if task.train.mapped and self.features == "trained":
            return ("features=trained trains the feature network on the whole train split as one tensor, and the task is "
                    "memory-mapped: use features=random")
        return self.teacher_reason(task)

    def distill(self, task: TaskView, budget: Budget, learner: Learner, context: RunContext) -> Artifact:
        ipc = budget.ipc(task)
        model = learner.build(task, context.seed).to(context.device)
        if self.features == "trained":
            recipe = Recipe(epochs=self.epochs)
            learner.fit(model, Artifact({"x": task.train.x, "y": task.train.y}), recipe, context.generator)
            context.progress.update(1, 2, stage=1)
        model.eval()
        with torch.no_grad():
            picks = []
            for c in range(task.num_classes):  # type: ignore[arg-type]  # supports() admits classification tasks only
                idx = task.class_index(c)
                feats = torch.cat([learner.embed(model, task.train.take(idx[i : i + 1024])) for i in range(0, len(idx), 1024)])
                picks.append(idx[herding_select(feats, ipc)])
        context.progress.update(2, 2, stage=2)
        return self.artifact(task, torch.cat(picks), context, {"features": self.features})
