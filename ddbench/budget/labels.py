"""Label regimes: how an artifact's targets reach the student, what each is charged, and the
teacher the harness rebuilds from the artifact's own tensors (docs/labels.md).

The regime is read off the artifact by the harness, never claimed by it:

- ``hard``: one stored target per row of ``x`` (an int64 class, or a regression value), or
  class-balanced labels implied by order;
- ``soft``: a fixed (N, C) label tensor ``y``, charged N x C;
- ``teacher``: the student learns by knowledge distillation from a teacher network on every
  augmented view; the teacher's whole ``state_dict`` is stored as ``teacher.<name>`` tensors and its
  architecture is the recipe's ``teacher`` learner spec; charged at its parameter count;
- ``soft-bank``: stored per-view soft labels (FKD style): ``bank.logits`` (N, V, C) and the crop
  and flip of each view ``bank.views`` (N, V, 5), charged as stored.

The only teacher a student ever reads is the one :func:`build_teacher` rebuilds from the
artifact's tensors, so an artifact that uses a teacher without storing it cannot be written.
A budget bounds an artifact's data: in the hard regime every tensor, as always; in the others
every tensor but the regime's label tensors, plus one label per row of ``x`` (the hard label those
replace). The label tensors are charged on top: in the stored parameters, in accuracy per kparam,
and in the by-tensor breakdown; boards rank each regime apart.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from ddbench.contracts.interfaces import Artifact, Learner, TaskView
    from ddbench.plugins import Registry

TEACHER_PREFIX = "teacher."
BANK_LOGITS, BANK_VIEWS = "bank.logits", "bank.views"
LABEL_PREFIXES = (TEACHER_PREFIX, "bank.")  # the names of a teacher's and a bank's tensors begin so
VIEW_FIELDS = 5
"""A view of a bank: top, left, height and width of its crop as fractions of the image side, and a
flip flag (0 or 1). A crop of the image's own size (height and width 1) is a shift by whole pixels
that may reach past the border (a padded random crop: what lies outside is the padding's fill);
a smaller crop lies inside the image and is resized back to its size."""
VIEW_KINDS = ("crop", "resized")
"""How a bank draws its views: ``crop``, the CIFAR student protocol's padded random crop and flip
(:func:`ddbench.ops.augment.crop_padding`); ``resized``, the ImageNet relabel's RandomResizedCrop and flip."""


def regime(tensors: Mapping[str, Tensor], recipe: Mapping[str, Any]) -> str:
    """The label regime of an artifact with these tensors and this declared recipe."""
    if recipe.get("teacher") or any(k.startswith(TEACHER_PREFIX) for k in tensors):
        return "teacher"
    if BANK_LOGITS in tensors or BANK_VIEWS in tensors:
        return "soft-bank"
    y = tensors.get("y")
    if y is not None and y.is_floating_point() and y.dim() == 2:
        return "soft"
    return "hard"


def label_tensors(tensors: Mapping[str, Tensor], recipe: Mapping[str, Any]) -> list[str]:
    """The tensors that are the regime's labels (charged on top of the data budget outside ``hard``)."""
    kind = regime(tensors, recipe)
    names = ["y"] if "y" in tensors else []
    if kind == "teacher":
        names += [k for k in tensors if k.startswith(TEACHER_PREFIX)]
    elif kind == "soft-bank":
        names += [k for k in (BANK_LOGITS, BANK_VIEWS) if k in tensors]
    return names


def data_scalars(tensors: Mapping[str, Tensor], recipe: Mapping[str, Any]) -> int:
    """The scalars a budget bounds: every tensor (hard), or every non-label tensor plus one label per row of ``x``."""
    total = sum(t.numel() for t in tensors.values())
    if regime(tensors, recipe) == "hard":
        return total
    rows = len(tensors["x"]) if "x" in tensors and tensors["x"].dim() else 0
    return total - sum(tensors[k].numel() for k in label_tensors(tensors, recipe)) + rows


# -- the teacher -----------------------------------------------------------------------------
def teacher_tensors(model: nn.Module) -> dict[str, Tensor]:
    """A teacher's whole ``state_dict`` as artifact tensors ``teacher.<name>`` (what a distiller stores)."""
    return {TEACHER_PREFIX + k: v.detach().clone() for k, v in model.state_dict().items()}


def teacher_state(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The teacher's ``state_dict`` held in an artifact's ``teacher.*`` tensors."""
    return {k.removeprefix(TEACHER_PREFIX): v for k, v in tensors.items() if k.startswith(TEACHER_PREFIX)}


def installed(learners: Registry[Any] | None) -> Registry[Any]:
    """``learners``, or the installed plugins' learner registry where it is ``None``."""
    if learners is not None:
        return learners
    from ddbench.plugins import get_plugin_manager

    return get_plugin_manager().learners


def teacher_learner(spec: str, learners: Registry[Any]) -> Learner:
    """The learner a teacher spec names, built with exactly the spec's options (no profile defaults)."""
    from ddbench.plugins import instantiate, parse_named

    name, options = parse_named(spec)
    return instantiate(learners.get(name), options, "full")


def skeleton(spec: str, task: TaskView, learners: Registry[Any]) -> nn.Module:
    """An untrained module of the teacher's architecture (the layout its tensors must fill)."""
    return teacher_learner(spec, learners).build(task, 0)


def teacher_problem(tensors: Mapping[str, Tensor], recipe: Mapping[str, Any], task: TaskView,
                    learners: Registry[Any] | None) -> str | None:
    """Why an artifact's teacher cannot be rebuilt from its tensors (``None``: it can)."""
    spec, state = recipe.get("teacher"), teacher_state(tensors)
    if spec is None:
        return (f"it stores {len(state)} teacher.* tensors and declares no teacher: declare recipe "
                "teacher='<learner spec>' naming their architecture, or drop them.")
    if not state:
        return (f"it declares teacher {spec!r} but stores none of its weights: store the teacher's whole state_dict "
                "as tensors 'teacher.<name>' (ddbench.budget.labels.teacher_tensors(model)); a teacher is read from the artifact only.")
    if BANK_LOGITS in tensors or BANK_VIEWS in tensors:
        return "it stores both a teacher and a soft-label bank: one label regime per artifact."
    try:
        expected = skeleton(spec, task, installed(learners)).state_dict()
    except Exception as exc:  # noqa: BLE001 - an unknown name or bad options: the artifact is refused
        return f"its teacher {spec!r} cannot be built ({exc})."
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        first = (f"lacks teacher.{missing[0]}" if missing else f"has teacher.{extra[0]}, which {spec!r} does not have")
        return (f"its teacher tensors do not match {spec!r} ({len(missing)} missing, {len(extra)} unknown; it {first}): "
                "store exactly the state_dict of the declared architecture.")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape) or state[k].dtype != v.dtype:
            return (f"teacher.{k} is {str(state[k].dtype).removeprefix('torch.')} {tuple(state[k].shape)}, but {spec!r} "
                    f"has {str(v.dtype).removeprefix('torch.')} {tuple(v.shape)}.")
    return None


def build_teacher(tensors: Mapping[str, Tensor], spec: str, task: TaskView, learners: Registry[Any],
                  device: torch.device | str) -> nn.Module:
    """The teacher rebuilt from the artifact's ``teacher.*`` tensors alone, in eval mode, frozen."""
    model = skeleton(spec, task, learners)
    model.load_state_dict(teacher_state(tensors), strict=True)
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def with_teacher(artifact: Artifact, task: TaskView, learners: Registry[Any] | None, device: torch.device | str) -> Artifact:
    """``artifact`` with its ``teacher`` rebuilt from its own tensors when it is in the teacher
    regime (:func:`build_teacher`; ``learners`` defaults to the installed plugins'), else as it is."""
    from ddbench.contracts.interfaces import Artifact

    if regime(artifact.tensors, artifact.recipe) != "teacher":
        return artifact
    teacher = build_teacher(artifact.tensors, artifact.recipe["teacher"], task, installed(learners), device)
    return Artifact(artifact.tensors, artifact.recipe, artifact.meta, teacher)


def logits(model: nn.Module, x: Tensor, batch: int = 1024) -> Tensor:
    """``model``'s outputs on ``x`` in chunks, without gradients (the teacher in eval mode)."""
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


# -- the soft-label bank ---------------------------------------------------------------------
def bank_problem(tensors: Mapping[str, Tensor], num_classes: int | None) -> str | None:
    """Why an artifact's soft-label bank is malformed (``None``: it is well formed)."""
    if BANK_LOGITS not in tensors or BANK_VIEWS not in tensors:
        return f"a soft-label bank needs both {BANK_LOGITS!r} (N, V, C) and {BANK_VIEWS!r} (N, V, {VIEW_FIELDS})."
    logit, views, n = tensors[BANK_LOGITS], tensors[BANK_VIEWS], len(tensors["x"])
    if logit.dtype != torch.float32 or views.dtype != torch.float32:
        return "the bank's tensors must be float32."
    if logit.dim() != 3 or logit.shape[0] != n or logit.shape[2] != num_classes:
        return f"{BANK_LOGITS!r} has shape {tuple(logit.shape)}, expected ({n}, V, {num_classes})."
    if tuple(views.shape) != (n, logit.shape[1], VIEW_FIELDS):
        return f"{BANK_VIEWS!r} has shape {tuple(views.shape)}, expected ({n}, {logit.shape[1]}, {VIEW_FIELDS})."
    top, left, h, w, flip = views.unbind(-1)
    sized = (h > 0) & (w > 0) & (h <= 1) & (w <= 1)
    whole = (h == 1) & (w == 1) & (top.abs() < 1) & (left.abs() < 1)  # a shift, possibly past the border
    inside = (top >= 0) & (left >= 0) & (top + h <= 1 + 1e-6) & (left + w <= 1 + 1e-6)
    if not bool((sized & (whole | inside)).all()) or not bool(((flip == 0) | (flip == 1)).all()):
        return ("every bank view must be a crop inside the image, or a whole-size shift by less than the side "
                "(fractions), with a flip flag of 0 or 1.")
    return None


# -- losses and the teacher-free view ----------------------------------------------------------
def kd_loss(student: Tensor, target_logits: Tensor, temperature: float, t2: bool = False) -> Tensor:
    """KL(softmax(target / T) || softmax(student / T)) per batch mean, as the official CIFAR code;
    times T^2 with ``t2`` (Hinton et al.'s scaling, so the gradient does not shrink with T)."""
    t = temperature
    loss = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(target_logits / t, 1), reduction="batchmean", log_target=True)
    return loss * (t * t if t2 else 1.0)


def distilling_teacher(teacher: nn.Module, mode: str) -> nn.Module:
    """The teacher a student distils from under a recipe's ``teacher_mode``: for ``train`` (the
    official CIFAR code never sets its teacher to eval mode) a copy whose BatchNorm normalises each
    batch by its own statistics, so the stored teacher is untouched; for ``eval`` the artifact's teacher."""
    if mode == "eval":
        return teacher
    return copy.deepcopy(teacher).train()


def hard_labels(artifact_tensors: Mapping[str, Tensor], kind: str, teacher: nn.Module | None) -> Tensor:
    """The hard labels an artifact of regime ``kind`` implies: the teacher's argmax on ``x``, the
    argmax of the soft labels, or of the bank's mean prediction (its teacher-free form)."""
    if kind == "teacher":
        assert teacher is not None
        return logits(teacher, artifact_tensors["x"]).argmax(1)
    if kind == "soft-bank":
        return artifact_tensors[BANK_LOGITS].softmax(-1).mean(1).argmax(1)
    return artifact_tensors["y"].argmax(1)
