"""``sre2l`` and ``dwa`` (docs/methods.md §14): squeeze a teacher on the train split (cached,
:func:`ddbench.ops.teacher.squeeze_teacher`), recover images from real ones against it, relabel.

The relabelling decides the artifact's label regime (docs/labels.md), all charged by the harness:
``teacher`` (the published form: the teacher's weights are stored and the student distils from it
on every view), ``bank`` (per-view soft labels with their crops and flips), ``soft`` (one (N, C)
soft label per image) or ``hard`` (the teacher's argmax).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ddbench import options
from ddbench.interfaces import Artifact, Budget, Distiller, Learner, RunContext, TaskView
from ddbench.labels import BANK_LOGITS, BANK_VIEWS, crop_views, logits, random_views, teacher_tensors
from ddbench.ops.subsets import random_subset
from ddbench.ops.teacher import QUICK_TEACHER, SQUEEZE_EPOCHS, TEACHER, teacher_for
from ddbench_sre.recover import RecoverRecipe, directed_perturbation, recover

LABEL_FORMS = ("teacher", "bank", "soft", "hard")
JITTER_CIFAR = 4  # the published roll jitter, in pixels of a 32 x 32 image
PERTURBATION_STREAM = 7_000  # DWA draws the real batch of its perturbation from context.fork(PERTURBATION_STREAM + batch)


def pixel_bounds(task: TaskView, device: torch.device) -> tuple[Tensor, Tensor] | None:
    """Per-channel bounds of valid pixels ([0, 1] before the task's normalisation), or None when unknown."""
    mean, std = task.info.get("mean"), task.info.get("std")
    if not mean or len(task.input_shape) != 3:
        return None
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return (0 - m) / s, (1 - m) / s


class SRe2L(Distiller):
    """SRe2L (Yin, Xing & Shen, NeurIPS 2023), in its CIFAR form from real initialisation.

    Squeeze: train ``teacher`` (a learner spec; ResNet-18 in CIFAR form) for ``squeeze_epochs`` on
    the train split (cached). Recover: starting from ipc random real images per class, ``batch``
    images at a time, ``steps`` Adam steps (lr ``lr``, betas ``beta1``/``beta2``, cosine) on
    cross-entropy + ``r_bn`` x the BatchNorm-statistics distance under a random roll of up to
    ``jitter`` pixels (default: the published 4 px of 32 px CIFAR images, scaled to the image side;
    our choice off CIFAR). Relabel: ``labels`` (see the module doc), ``views`` views per image for a bank.
    """

    name = "sre2l"
    description = "SRe2L: squeeze a BatchNorm teacher, recover images by its statistics, relabel (stores the teacher)"
    quick = {**QUICK_TEACHER, "steps": 100, "views": 20}

    def __init__(self, teacher: str = TEACHER, squeeze_epochs: int = SQUEEZE_EPOCHS, squeeze_augment: str = "dsa",
                 steps: int = 1000, lr: float = 0.25, beta1: float = 0.5, beta2: float = 0.9, jitter: int | None = None,
                 r_bn: float = 0.01, batch: int = 100, labels: str = "teacher", views: int = 400):
        options.one_of("labels", labels, LABEL_FORMS)
        options.one_of("squeeze_augment", squeeze_augment, ("dsa", "none"))
        options.positive(squeeze_epochs=squeeze_epochs, steps=steps, lr=lr, batch=batch, views=views)
        options.non_negative(jitter=jitter, r_bn=r_bn)
        options.within("beta1", beta1, 0, 1)
        options.within("beta2", beta2, 0, 1)
        self.teacher, self.squeeze_epochs, self.squeeze_augment = teacher, squeeze_epochs, squeeze_augment
        self.steps, self.lr, self.beta1, self.beta2, self.jitter, self.r_bn = steps, lr, beta1, beta2, jitter, r_bn
        self.batch, self.labels, self.views = batch, labels, views

    def supports(self, task: TaskView, learner: Learner) -> str | None:
        if task.num_classes is None or len(task.input_shape) != 3:
            return f"{self.name} recovers images of a classification task through a convolutional teacher"
        return None

    def batch_teacher(self, teacher: nn.Module, task: TaskView, context: RunContext, batch: int, index: int) -> nn.Module:
        """The teacher batch ``index`` is recovered against: the squeezed teacher itself (DWA overrides this)."""
        return teacher

    def distill(self, task: TaskView, budget: Budget, learner: Learner, context: RunContext) -> Artifact:
        model, meta = teacher_for(task, self.teacher, self.squeeze_epochs, self.squeeze_augment, context)
        index = random_subset(task, budget, context.generator)  # ipc per class, class by class
        x0, y = task.train.x[index], task.train.y[index]
        order = interleaved(y, task.num_classes)  # type: ignore[arg-type]
        bounds = pixel_bounds(task, context.device)
        jitter = self.jitter if self.jitter is not None else max(1, round(JITTER_CIFAR * task.input_shape[-1] / 32))
        recipe = RecoverRecipe(self.steps, self.lr, self.beta1, self.beta2, jitter, self.r_bn)
        x = x0.clone()
        chunks = [order[i : i + self.batch] for i in range(0, len(order), self.batch)]
        total = done = len(chunks) * recipe.steps
        for b, chunk in enumerate(chunks):
            teacher = self.batch_teacher(model, task, context, len(chunk), b)
            report = lambda step, loss, done=b * recipe.steps: context.progress.update(done + step, total, loss=loss)  # noqa: E731
            x[chunk] = recover(teacher, x0[chunk], y[chunk], recipe, context.generator, bounds, report)
            if context.should_stop() and b + 1 < len(chunks):  # the later batches stay real images
                meta["stopped_early"], done = True, (b + 1) * recipe.steps
                break
        meta.update({"iterations": done, "batches": len(chunks), "jitter": jitter})
        return Artifact(*relabel(model, x, y, self.labels, self.views, self.teacher, context), meta=meta)


class DWA(SRe2L):
    """DWA (Du et al., NeurIPS 2024): SRe2L in which each batch is recovered against a copy of the
    teacher moved ``K`` times by ``rho / K`` along its normalised loss-ascent direction on a random
    real batch of the same size (docs/methods.md §14)."""

    name = "dwa"
    description = "DWA: SRe2L with directed weight adjustment of the teacher before each batch (stores the teacher)"
    quick = dict(SRe2L.quick)

    def __init__(self, teacher: str = TEACHER, squeeze_epochs: int = SQUEEZE_EPOCHS, squeeze_augment: str = "dsa",
                 steps: int = 1000, lr: float = 0.25, beta1: float = 0.5, beta2: float = 0.9, jitter: int | None = None,
                 r_bn: float = 0.01, batch: int = 100, labels: str = "teacher", views: int = 400,
                 K: int = 12, rho: float = 15e-3):  # noqa: N803 - the paper's symbol
        options.positive(K=K)
        options.non_negative(rho=rho)
        super().__init__(teacher, squeeze_epochs, squeeze_augment, steps, lr, beta1, beta2, jitter, r_bn, batch, labels, views)
        self.K, self.rho = K, rho

    def batch_teacher(self, teacher: nn.Module, task: TaskView, context: RunContext, batch: int, index: int) -> nn.Module:
        # a generator of its own, so that the recovery draws what sre2l's would: rho = 0 gives sre2l's artifact exactly
        pick = torch.randperm(len(task.train), generator=context.fork(PERTURBATION_STREAM + index), device=task.train.y.device)[:batch]
        return directed_perturbation(teacher, task.train.x[pick], task.train.y[pick], self.K, self.rho)


def interleaved(y: Tensor, num_classes: int) -> Tensor:
    """Indices of ``y`` (class-ordered) taken round-robin over classes, so that each recovery batch mixes them."""
    per_class = [torch.nonzero(y == c).flatten() for c in range(num_classes)]
    rounds = max(len(p) for p in per_class)
    return torch.cat([p[i : i + 1] for i in range(rounds) for p in per_class])


def relabel(teacher: nn.Module, x: Tensor, y: Tensor, form: str, views: int, spec: str,
            context: RunContext) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The artifact's tensors and declared recipe for relabelling form ``form`` (x is class-ordered)."""
    recipe = {"labels": "class-balanced"}
    if form == "teacher":
        return {"x": x, **teacher_tensors(teacher)}, {**recipe, "teacher": spec}
    if form == "bank":
        view = random_views(len(x), views, context.generator)
        bank = torch.stack([logits(teacher, crop_views(x, view[:, v])) for v in range(views)], 1)
        return {"x": x, BANK_LOGITS: bank, BANK_VIEWS: view}, recipe
    out = logits(teacher, x)
    if form == "soft":
        return {"x": x, "y": out.softmax(1)}, {}
    return {"x": x, "y": out.argmax(1)}, {}
