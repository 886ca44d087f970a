"""``sre2l`` and ``dwa`` (docs/methods.md §14): squeeze a teacher on the train split (cached,
:func:`ddbench.ops.teacher.squeeze_teacher`), recover images against it (from noise in SRe2L's
official code, from real images in DWA's), relabel.

The relabelling decides the artifact's label regime (docs/labels.md), all charged by the harness:
``teacher`` (the published form: the teacher's weights are stored and the student distils from it
on every view), ``bank`` (per-view soft labels with their crops and flips), ``soft`` (one (N, C)
soft label per image) or ``hard`` (the teacher's argmax).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ddbench.budget.labels import BANK_LOGITS, BANK_VIEWS, VIEW_KINDS, logits, teacher_tensors
from ddbench.contracts import options
from ddbench.contracts.deviations import Deviation
from ddbench.contracts.interfaces import Artifact, Distiller, Learner, RunContext, TaskView
from ddbench.contracts.recipe import crop_protocol
from ddbench.ops.augment import crop_views, padded_views, random_views
from ddbench.ops.subsets import random_subset
from ddbench.ops.teacher import QUICK_TEACHER, SQUEEZE_AUGMENTS, SQUEEZE_EPOCHS, SQUEEZE_MAPPED, TEACHER, teacher_for
from ddbench.vocab import Budget
from ddbench_sre.recover import Perturb, RecoverRecipe, directed_perturbation, recover

SRE2L_CODE = ("VILA-Lab/SRe2L @ 8d00cba: SRe2L/*small_dataset/squeeze_cifar.py, recover_cifar.py, recover_cifar.sh, "
              "relabel_cifar.py, utils.py")
DWA_CODE = ("AngusDujw/Diversity-Driven-Synthesis @ c5b125f: distillation/distillation_cifar.py, perterb.py, utils.py, "
            "validation/validation_cifar.py, pretrain/squeeze_cifar10.py, scripts/run_cifar.sh")
STUDENT = (
    Deviation("student network", "ResNet-18 (CIFAR form)", "the cell's learner (ConvNet-3 unless the suite names another)",
              "every row of a board trains the same learner"),
    Deviation("student epochs", "400 (DWA's script; SRe2L's relabel default 200)", "the task's quick E (150; 80 on digits "
              "in the default suite)", "CPU minutes", "profile=quick"),
    Deviation("student batch", "128", "16", "at ipc 10 the official batch is one AdamW step an epoch, too few in the quick "
              "epochs: digits' validation accuracy of random images with the teacher is 39 / 47 % at batch 128 against "
              "79 / 84 % at 16 after 100 / 150 epochs (docs/labels.md §3)", "profile=quick"),
    Deviation("stored images", "saved as 8-bit JPEG files and read back by the student", "float pixels in the artifact",
              "lossless, and counted at their scalars"),
    Deviation("jitter off CIFAR", "4 px on 32 x 32 CIFAR images", "scaled to the image side: 1 px on 8 x 8, 4 px on 28 x 28",
              "the published shift as a fraction of the image", "jitter=None"),
    Deviation("recovery steps", "1,000", "the option's value (50 in the quick profile)", "CPU minutes", "steps!=1000"),
    Deviation("teacher", "ResNet-18 (CIFAR form), width 64", "the option's value (width 16 in the quick profile)", "CPU minutes",
              "teacher!=resnet:depth=18,width=64"),
    Deviation("teacher training", "200 epochs", "the option's value (10 in the quick profile)", "CPU minutes", "squeeze_epochs!=200"),
    Deviation("teacher augmentation", "padded random crop and flip", "the option's value", "a user's choice",
              "squeeze_augment!=crop"),
    Deviation("recovery batch", "one image of every class (CIFAR-10: 10, CIFAR-100: 100)", "the option's batch",
              "a user's choice", "batch!=None"),
    Deviation("relabelling", "the teacher online on every augmented, mixed view", "a stored per-view soft-label bank "
              "(docs/labels.md), its views drawn as bank_views, without mixup", "a label regime that stores labels instead "
              "of the teacher; mixup pairs images, which one image's stored views cannot", "labels=bank"),
    Deviation("relabelling", "the teacher online on every augmented, mixed view", "one softmax row per image (T = 1)",
              "a label regime that stores soft labels instead of the teacher", "labels=soft"),
    Deviation("relabelling", "the teacher online on every augmented, mixed view", "the teacher's argmax per image",
              "a hard-label form of the recovered images", "labels=hard"),
    Deviation("bank views", "no stored views in the CIFAR code; SRe2L's ImageNet relabel draws RandomResizedCrop (0.08-1) views",
              "RandomResizedCrop views on images of any size", "the ImageNet protocol's views, for comparison", "bank_views=resized"),
)
LABEL_FORMS = ("teacher", "bank", "soft", "hard")
INITS = ("noise", "real")
JITTER_CIFAR = 4  # the published roll jitter, in pixels of a 32 x 32 image


def pixel_bounds(task: TaskView, device: torch.device) -> tuple[Tensor, Tensor] | None:
    """Per-channel bounds of valid pixels ([0, 1] before the task's normalisation), or None when unknown."""
    mean, std = task.info.get("mean"), task.info.get("std")
    if not mean or len(task.input_shape) != 3:
        return None
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return (0 - m) / s, (1 - m) / s


class SRe2L(Distiller):
    """SRe2L (Yin, Xing & Shen, NeurIPS 2023) in the form of its official CIFAR code.

    Squeeze: train ``teacher`` (a learner spec; ResNet-18 in CIFAR form) for ``squeeze_epochs`` on
    the train split (cached; augmentation ``squeeze_augment``), or read it from the checkpoint file
    ``teacher_weights`` (the ImageNet protocol's pretrained torchvision ResNet-18 with
    ``teacher=resnet-imagenet:depth=18``; the only way on a memory-mapped task). Recover: starting from Gaussian
    noise (``init=noise``) or ipc random real images per class (``init=real``), ``batch`` images at
    a time (default: one image of every class, the official batches), ``steps`` Adam steps (lr
    ``lr``, betas ``beta1``/``beta2``, cosine) on cross-entropy + ``r_bn`` x the BatchNorm-statistics
    distance (variance terms x ``r_var``, first layer x ``first_bn``) under a random roll of 0 to
    ``jitter`` pixels (default: the published 4 px of 32 px CIFAR images, scaled to the image side;
    ours off CIFAR). Relabel: ``labels`` (see the module doc), ``views`` views per image for a bank,
    drawn as ``bank_views`` (``crop``: the CIFAR protocol's padded crop and flip; ``resized``: the
    ImageNet relabel's random resized crop).
    """

    name = "sre2l"
    resumable = True
    description = "SRe2L: squeeze a BatchNorm teacher, recover images by its statistics, relabel (stores the teacher)"
    quick: ClassVar[dict[str, Any]] = {**QUICK_TEACHER, "steps": 50, "views": 20}
    reads_mapped = True  # real images only through the class-balanced draw; a mapped task needs teacher_weights
    official_code = SRE2L_CODE
    deviations: ClassVar[tuple[Deviation, ...]] = (
        Deviation("initialisation", "Gaussian noise (torch.randn)", "random real images of each class (option init=real)",
                  "DWA's initialisation, to separate its two changes", "init=real"),
        *STUDENT,
    )

    def __init__(self, teacher: str = TEACHER, squeeze_epochs: int = SQUEEZE_EPOCHS, squeeze_augment: str = "crop",
                 steps: int = 1000, lr: float = 0.25, beta1: float = 0.5, beta2: float = 0.9, jitter: int | None = None,
                 r_bn: float = 0.01, r_var: float = 1.0, first_bn: float = 10.0, batch: int | None = None,
                 init: str = "noise", labels: str = "teacher", views: int = 400, bank_views: str = "crop",
                 teacher_weights: str = ""):
        options.one_of("labels", labels, LABEL_FORMS)
        options.one_of("init", init, INITS)
        options.one_of("bank_views", bank_views, VIEW_KINDS)
        options.one_of("squeeze_augment", squeeze_augment, SQUEEZE_AUGMENTS)
        options.positive(squeeze_epochs=squeeze_epochs, steps=steps, lr=lr, batch=batch, views=views)
        options.non_negative(jitter=jitter, r_bn=r_bn, r_var=r_var, first_bn=first_bn)
        options.within("beta1", beta1, 0, 1)
        options.within("beta2", beta2, 0, 1)
        self.teacher, self.squeeze_epochs, self.squeeze_augment = teacher, squeeze_epochs, squeeze_augment
        self.recipe = RecoverRecipe(steps, lr, beta1, beta2, 0, r_bn, r_var, first_bn)  # the jitter depends on the task
        self.jitter, self.batch, self.init = jitter, batch, init
        self.labels, self.views, self.bank_views = labels, views, bank_views
        self.teacher_weights = teacher_weights

    def supports(self, task: TaskView, learner: Learner) -> str | None:
        if task.num_classes is None or len(task.input_shape) != 3:
            return f"{self.name} recovers images of a classification task through a convolutional teacher"
        if task.train.mapped and not self.teacher_weights:
            return SQUEEZE_MAPPED
        return None

    def perturbation(self, teacher: nn.Module, y: Tensor) -> Perturb | None:
        """What replaces the teacher for a batch with labels ``y`` (DWA overrides this): nothing."""
        return None

    def distill(self, task: TaskView, budget: Budget, learner: Learner, context: RunContext) -> Artifact:
        model, meta = teacher_for(task, self.teacher, self.squeeze_epochs, self.squeeze_augment, context, self.teacher_weights)
        classes: int = task.num_classes  # type: ignore[assignment]  # supports() admits classification tasks only
        index = random_subset(task, budget, context.generator)  # ipc per class, class by class
        y = task.train.y[index]
        x0 = task.train.take(index) if self.init == "real" else \
            torch.randn(len(index), *task.input_shape, generator=context.generator, device=context.device)
        order = interleaved(y, classes)
        bounds = pixel_bounds(task, context.device)
        jitter = self.jitter if self.jitter is not None else max(1, round(JITTER_CIFAR * task.input_shape[-1] / 32))
        recipe = dataclasses.replace(self.recipe, jitter=jitter)
        batch = self.batch or classes
        x = x0.clone()
        chunks = [order[i : i + batch] for i in range(0, len(order), batch)]
        total = done = len(chunks) * recipe.steps
        checkpoint = context.checkpointer(images=x, generator=context.generator)
        step, saved = checkpoint.restore()
        resumed = saved["batch"] if step else 0  # the batch a checkpoint was taken in (the earlier ones are in x)
        for b, chunk in enumerate(chunks):
            if b < resumed:
                continue
            report = lambda step, loss, done=b * recipe.steps: context.progress.update(done + step, total, loss=loss)  # noqa: E731 - a one-line helper
            x[chunk] = recover(model, x0[chunk], y[chunk], recipe, context.generator, bounds, report,
                               self.perturbation(model, y[chunk]), checkpoint, saved if step and b == resumed else None,
                               {"batch": b}, b * recipe.steps)
            if context.should_stop() and b + 1 < len(chunks):  # the later batches stay at their initialisation
                meta["stopped_early"], done = True, (b + 1) * recipe.steps
                break
        meta.update({"iterations": done, "batches": len(chunks), "batch": batch, "jitter": jitter, "init": self.init})
        return Artifact(*relabel(model, x, y, self.labels, self.views, self.bank_views, self.teacher, task, context), meta=meta)


class DWA(SRe2L):
    """DWA (Du et al., NeurIPS 2024) in the form of its official CIFAR code: SRe2L from real images
    (``init=real``) with the variance terms of the BatchNorm loss weighted ``r_var`` = 11, in which
    each batch is recovered against a copy of the teacher moved ``K`` times by ``rho / K`` along its
    normalised loss-ascent direction on that batch's own first jittered view (docs/methods.md §14)."""

    name = "dwa"
    description = "DWA: SRe2L with directed weight adjustment of the teacher before each batch (stores the teacher)"
    quick: ClassVar[dict[str, Any]] = dict(SRe2L.quick)
    official_code = DWA_CODE
    deviations: ClassVar[tuple[Deviation, ...]] = (
        Deviation("initialisation", "real images of each class", "Gaussian noise (option init=noise)", "SRe2L's initialisation",
                  "init=noise"),
        Deviation("first recovery step", "the 12 ascent passes also add their cross-entropy gradient into the pixels, which is "
                  "not zeroed before the first Adam step", "the first step follows the recovery loss alone",
                  "an accumulation slip of the official loop; it touches one step of 1,000"),
        Deviation("reported accuracy", "validation_cifar.py tracks the best test accuracy over evaluations every 10 epochs",
                  "the final epoch", "the test split never chooses anything"),
        *STUDENT,
    )

    def __init__(self, teacher: str = TEACHER, squeeze_epochs: int = SQUEEZE_EPOCHS, squeeze_augment: str = "crop",
                 steps: int = 1000, lr: float = 0.25, beta1: float = 0.5, beta2: float = 0.9, jitter: int | None = None,
                 r_bn: float = 0.01, r_var: float = 11.0, first_bn: float = 10.0, batch: int | None = None,
                 init: str = "real", labels: str = "teacher", views: int = 400, bank_views: str = "crop",
                 K: int = 12, rho: float = 15e-3, teacher_weights: str = ""):  # noqa: N803 - the paper's symbol
        options.positive(K=K)
        options.non_negative(rho=rho)
        super().__init__(teacher, squeeze_epochs, squeeze_augment, steps, lr, beta1, beta2, jitter, r_bn, r_var, first_bn, batch,
                         init, labels, views, bank_views, teacher_weights)
        self.K, self.rho = K, rho

    def perturbation(self, teacher: nn.Module, y: Tensor) -> Perturb | None:
        return lambda view: directed_perturbation(teacher, view, y, self.K, self.rho)


def interleaved(y: Tensor, num_classes: int) -> Tensor:
    """Indices of ``y`` (class-ordered) taken round-robin over classes, so that each recovery batch mixes them."""
    per_class = [torch.nonzero(y == c).flatten() for c in range(num_classes)]
    rounds = max(len(p) for p in per_class)
    return torch.cat([p[i : i + 1] for i in range(rounds) for p in per_class])


def relabel(teacher: nn.Module, x: Tensor, y: Tensor, form: str, views: int, view_kind: str, spec: str, task: TaskView,
            context: RunContext) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The artifact's tensors and declared recipe for relabelling form ``form`` (x is class-ordered);
    a bank's ``views`` views are drawn as ``view_kind`` (:data:`ddbench.budget.labels.VIEW_KINDS`)."""
    recipe = {"labels": "class-balanced"}
    if form == "teacher":
        return {"x": x, **teacher_tensors(teacher)}, {**recipe, "teacher": spec}
    if form == "bank":
        crop = crop_protocol(task.info, task.input_shape)
        view = (padded_views(len(x), views, task.input_shape[-1], crop["augment"] == "crop_flip", context.generator)
                if view_kind == "crop" else random_views(len(x), views, context.generator))
        bank = torch.stack([logits(teacher, crop_views(x, view[:, v], crop["crop_fill"])) for v in range(views)], 1)
        return {"x": x, BANK_LOGITS: bank, BANK_VIEWS: view}, recipe
    out = logits(teacher, x)
    if form == "soft":
        return {"x": x, "y": out.softmax(1)}, {}
    return {"x": x, "y": out.argmax(1)}, {}
