"""The evaluation recipe, and the rules for the part of it an artifact may declare.

A task gives the default recipe of its protocol (:meth:`ddbench.contracts.interfaces.Task.recipe`). An
artifact may override the protocol's *choices* (how many epochs, which augmentation, whether its
labels are implied by order, which learner mode) but never a real number: a value a method learned
or tuned, such as a step size, must travel as a tensor, where the harness counts it.
:func:`declared_recipe` enforces that at the artifact boundary (docs/threat-model.md).
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ddbench.errors import ArtifactError, SuiteError, close_names
from ddbench.vocab import PROTOCOL_FIELDS, PROTOCOLS

if TYPE_CHECKING:  # annotations only: boards and records import this module without torch
    from torch import Tensor

AUGMENTS = ("none", "dsa", "dc", "crop", "crop_flip")
LABELS = ("stored", "class-balanced")
PROTOCOL_ONLY = ("lr", "momentum", "weight_decay", "temperature", "optimizer", "schedule", "mixup", "crop_fill", "teacher_mode",
                 "kd_t2")
"""Recipe fields set by the task's protocol, never declared by an artifact: the real-valued ones,
the optimiser and its schedule, which those real values belong to, and how a student distils."""
FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
"""The DSA augmentation families a ``dsa_strategy`` joins with ``_`` (docs/methods.md §4)."""
TEACHER_SPEC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(:[A-Za-z0-9_]+=[A-Za-z0-9_.'\"-]+(,[A-Za-z0-9_]+=[A-Za-z0-9_.'\"-]+)*)?$")
KD_PROTOCOL = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "schedule": "cosine", "temperature": 30.0,
               "batch_size": 128, "mixup": 0.8, "teacher_mode": "train", "kd_t2": False}
"""The student recipe of the teacher and soft-bank regimes (SRe2L's ``relabel_cifar.py`` and DWA's
``validation_cifar.py``, docs/labels.md §3): AdamW, lr 1e-3, weight decay 0.01, cosine schedule, KL
at temperature 30 (not multiplied by T^2), batch 128, mixup with lambda ~ Beta(0.8, 0.8) relabelled
by the teacher, which is left in train mode; image tasks add their padded random crop and flip
(:meth:`ddbench.contracts.interfaces.Task.teacher_recipe`)."""
QUICK_KD_BATCH = 16
"""The student batch of that recipe in the quick profile [ours, chosen on digits' validation split,
docs/labels.md §3]: at ipc 10 the official 128 is one step an epoch, too few in 100-150 quick epochs."""
KD_EPOCHS = 399
"""E of that recipe in the full profile: epoch indices 0..399, the published 400 epochs."""
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20
MAX_OPTION_INT = 1 << 62


@dataclass(frozen=True)
class Recipe:
    """How a learner trains on an artifact (``docs/methods.md`` §3 for the image defaults).

    ``epochs`` is E: training runs over epoch indices 0..E (E + 1 epochs) and the learning rate
    is multiplied by 0.1 once, after epoch index E//2 + 1, as in the official ``evaluate_synset``.
    ``lr_from_artifact`` names an artifact tensor that holds a learned learning rate (MTT).
    ``labels="class-balanced"`` declares hard labels implied by order (``ipc`` rows of class 0,
    then class 1, ...): the artifact may then omit ``y`` and the harness derives it, so a method
    that also stores a learned scalar still fits an ``ipc`` budget.
    ``options`` carries learner-specific public settings (the two-layer learner's step size); the
    learner lists the ones it reads in :attr:`~ddbench.contracts.interfaces.Learner.recipe_options`.
    ``augment``: ``dsa`` (per sample, ``dsa_strategy``), ``dc`` (DC's MNIST augmentation), ``crop``
    (a random crop after zero-padding by :func:`~ddbench.ops.augment.crop_padding` pixels, the padding filled with
    ``crop_fill`` per channel, torchvision's ``RandomCrop(side, padding)``) or ``crop_flip`` (that and
    a horizontal flip with probability 1/2), or ``none``.
    ``optimizer`` (``sgd`` or ``adamw``), ``schedule`` (``step``: the x0.1 decay above; ``cosine``:
    per epoch to zero), ``temperature`` (of the distillation loss) and how a student distils
    (``mixup``: the Beta parameter of a per-batch mixup relabelled by the teacher, 0 for none;
    ``teacher_mode``: the teacher's BatchNorm in ``train`` mode on each batch, as the official CIFAR
    code leaves it, or in ``eval`` mode; ``kd_t2``: the KL multiplied by T^2) come from the task's protocol:
    its hard-label :meth:`~ddbench.contracts.interfaces.Task.recipe` or, for artifacts that train from a
    teacher or a soft-label bank, its :meth:`~ddbench.contracts.interfaces.Task.teacher_recipe`
    (docs/labels.md). ``teacher`` names the architecture of the teacher stored in the artifact's
    ``teacher.*`` tensors, as a learner spec (``resnet:depth=18,width=16``).
    """

    epochs: int = 300
    lr: float = 0.01
    lr_from_artifact: str | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    augment: Literal["none", "dsa", "dc", "crop", "crop_flip"] = "none"
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    labels: Literal["stored", "class-balanced"] = "stored"
    options: dict[str, Any] = field(default_factory=dict)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    schedule: Literal["step", "cosine"] = "step"
    temperature: float = 1.0
    teacher: str | None = None
    crop_fill: tuple[float, ...] = ()
    mixup: float = 0.0
    teacher_mode: Literal["eval", "train"] = "train"
    kd_t2: bool = False

    def updated(self, overrides: dict[str, Any]) -> Recipe:
        """A copy with ``overrides`` applied; unknown keys are an error naming the fix."""
        names = field_names()
        for key in overrides:
            if key not in names:
                raise SuiteError(
                    f"unknown recipe field {key!r}.{close_names(key, names)} "
                    f"Recipe fields: {', '.join(sorted(names))}."
                )
        if "options" in overrides:
            overrides = {**overrides, "options": {**self.options, **overrides["options"]}}
        return dataclasses.replace(self, **overrides)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def crop_protocol(info: Mapping[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
    """The CIFAR protocol's augmentation as recipe fields for a task with this public ``info`` and
    ``input_shape``: a padded random crop, with a horizontal flip where the task's DSA strategy flips
    (``crop_flip``, else ``crop``), the padding filled with a black pixel's value (-mean / std per
    channel); nothing for inputs that are not (C, H, W) images."""
    if len(input_shape) != 3:
        return {}
    fill = tuple(-m / s for m, s in zip(info.get("mean") or (), info.get("std") or ()))
    return {"augment": "crop_flip" if "flip" in (info.get("dsa_strategy") or "") else "crop", "crop_fill": fill}


def field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(Recipe)}


def evaluation_recipe(base: Recipe, declared: Mapping[str, Any], protocol: str = "native") -> Recipe:
    """The recipe a cell trains with: ``base`` (the task's recipe under ``native``, its common recipe
    under ``common``) updated by the artifact's ``declared`` fields, leaving out the
    :data:`PROTOCOL_FIELDS` under ``common``."""
    if protocol not in PROTOCOLS:
        raise SuiteError(f"unknown protocol {protocol!r}.{close_names(protocol, PROTOCOLS)} Protocols: {', '.join(PROTOCOLS)}.")
    if protocol == "common":
        declared = {k: v for k, v in declared.items() if k not in PROTOCOL_FIELDS}
    return base.updated(dict(declared))


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """``'color_crop_cutout_flip_scale_rotate'`` -> its families; unknown ones are an error."""
    families = tuple(s for s in strategy.split("_") if s)
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise ValueError(f"unknown DSA families {bad} in strategy {strategy!r}: use '_'-joined names from {FAMILIES}.")
    return families


def declared_recipe(overrides: Any, tensors: Mapping[str, Tensor], option_types: Mapping[str, type],
                    where: str) -> dict[str, Any]:
    """Check the recipe overrides an artifact declares and return them.

    ``tensors`` are the artifact's (``lr_from_artifact`` must name a one-element, finite, positive
    float tensor among them), ``option_types`` the learner's :attr:`recipe_options`, ``where`` names
    the artifact in errors. Every problem is an :class:`ArtifactError` of one line naming the key.
    """
    if not isinstance(overrides, dict):
        raise ArtifactError(f"{where} declares a recipe of type {type(overrides).__name__}: declare a dict of Recipe fields.")
    names = field_names()
    checked: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in names:
            raise ArtifactError(f"{where} declares unknown recipe field {key!r}.{close_names(str(key), names)} "
                                f"Recipe fields: {', '.join(sorted(names))}.")
        if key in PROTOCOL_ONLY:
            raise ArtifactError(f"{where} declares recipe {key}={value!r}: real-valued fields, the optimizer and its schedule "
                                "belong to the task's protocol. "
                                "A learned or tuned value must be a counted tensor (for a step size: store it, e.g. "
                                "tensors['lr'], and declare lr_from_artifact='lr').")
        checked[key] = _FIELD_CHECKS[key](value, tensors, option_types, f"{where} declares recipe {key}={value!r}")
    return checked


def _integer(low: int, high: int) -> Any:
    def check(value: Any, tensors: Mapping[str, Tensor], option_types: Mapping[str, type], where: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ArtifactError(f"{where}: give an integer from {low} to {high}.")
        return value
    return check


def _choice(choices: tuple[str, ...]) -> Any:
    def check(value: Any, tensors: Mapping[str, Tensor], option_types: Mapping[str, type], where: str) -> str:
        if value not in choices:
            raise ArtifactError(f"{where}: use one of {', '.join(choices)}.{close_names(str(value), choices)}")
        return value
    return check


def _strategy(value: Any, tensors: Mapping[str, Tensor], option_types: Mapping[str, type], where: str) -> str:

    try:
        parse_strategy(value if isinstance(value, str) else "")
    except ValueError:
        raise ArtifactError(f"{where}: use '_'-joined DSA families from {', '.join(FAMILIES)}.") from None
    return value


def _lr_tensor(value: Any, tensors: Mapping[str, Tensor], option_types: Mapping[str, type], where: str) -> str | None:
    if value is None:
        return None
    t = tensors.get(value) if isinstance(value, str) else None
    if t is None:
        raise ArtifactError(f"{where}: name a tensor of the artifact (it has {', '.join(sorted(tensors)) or 'none'}).")
    if t.numel() != 1 or not t.is_floating_point():
        raise ArtifactError(f"{where}: that tensor must hold one floating-point learning rate "
                            f"(it is {t.dtype} of shape {tuple(t.shape)}).")
    lr = float(t.reshape(-1)[0])
    if not math.isfinite(lr) or lr <= 0:
        raise ArtifactError(f"{where}: the learning rate it holds is {lr}; store a finite positive value.")
    return value


def _teacher(value: Any, tensors: Mapping[str, Tensor], option_types: Mapping[str, type], where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not TEACHER_SPEC.match(value):
        raise ArtifactError(f"{where}: name the teacher's architecture as a learner spec, e.g. 'resnet:depth=18,width=16'.")
    return value


def _options(value: Any, tensors: Mapping[str, Tensor], option_types: Mapping[str, type], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ArtifactError(f"{where}: options must be a dict of the learner's recipe options.")
    for key, v in value.items():
        if key not in option_types:
            known = ", ".join(sorted(option_types)) or "none"
            raise ArtifactError(f"{where}: the learner reads no recipe option {key!r}.{close_names(str(key), option_types)} "
                                f"Its options: {known}.")
        expected = option_types[key]
        if isinstance(v, float) or expected is float:
            raise ArtifactError(f"{where}: option {key!r} is real-valued, which an artifact cannot declare; "
                                "a learned or tuned value must be a counted tensor of the artifact.")
        if not isinstance(v, expected) or (isinstance(v, bool) and expected is not bool):
            raise ArtifactError(f"{where}: option {key!r} takes a {expected.__name__} the artifact may declare "
                                f"(got {type(v).__name__}).")
        if isinstance(v, int) and abs(v) > MAX_OPTION_INT:
            raise ArtifactError(f"{where}: option {key!r} = {v} is out of range (|value| <= 2^62).")
    return dict(value)


_FIELD_CHECKS = {
    "epochs": _integer(0, MAX_EPOCHS),
    "batch_size": _integer(1, MAX_BATCH),
    "augment": _choice(AUGMENTS),
    "dsa_strategy": _strategy,
    "labels": _choice(LABELS),
    "lr_from_artifact": _lr_tensor,
    "options": _options,
    "teacher": _teacher,
}
