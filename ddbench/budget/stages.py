"""Staged artifacts: an ordered ``x`` trained in stages, each with its own step size (docs/staged.md).

An artifact is staged when it stores ``stage.end`` (K,) int64, the cumulative row counts of its K
stages over ``x`` (strictly increasing, the last equal to ``len(x)``), and ``stage.lr`` (K,) float,
the step size of each stage. A learner trains stage k on rows ``0 .. stage.end[k]`` (the earlier
stages' rows and the new ones) with ``stage.lr[k]``, continuing from where stage k-1 left the
model. Both tensors are ordinary artifact tensors, so the harness counts them with the rest.

With ``labels = "class-balanced"`` each stage's new rows are class-balanced in class order.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ddbench.contracts.interfaces import Artifact

PREFIX = "stage."
END, LR = "stage.end", "stage.lr"
ROW_TENSORS = ("x", "y", "bank.logits", "bank.views")
"""The per-row tensors a stage's prefix slices (everything else is shared by all stages)."""


def is_staged(tensors: Mapping[str, Tensor]) -> bool:
    """Whether the artifact declares stages (any ``stage.*`` tensor)."""
    return any(k.startswith(PREFIX) for k in tensors)


def stage_problem(tensors: Mapping[str, Tensor], recipe: Mapping[str, Any], num_classes: int | None) -> str | None:
    """Why an artifact's stage tensors are malformed (``None``: well formed, or not staged)."""
    if not is_staged(tensors):
        return None
    unknown = sorted(k for k in tensors if k.startswith(PREFIX) and k not in (END, LR))
    if unknown:
        return f"stores {unknown[0]!r}, which is not a stage tensor: a staged artifact has exactly {END!r} and {LR!r}."
    if END not in tensors or LR not in tensors:
        return f"a staged artifact needs both {END!r} (K,) int64 cumulative row counts and {LR!r} (K,) step sizes."
    end, lr = tensors[END], tensors[LR]
    rows = len(tensors["x"]) if "x" in tensors and tensors["x"].dim() else 0
    if end.dtype != torch.int64 or end.dim() != 1 or len(end) == 0:
        return f"{END!r} is {str(end.dtype).removeprefix('torch.')} of shape {tuple(end.shape)}: store (K,) int64 cumulative row counts."
    if not lr.is_floating_point() or tuple(lr.shape) != tuple(end.shape):
        return (f"{LR!r} is {str(lr.dtype).removeprefix('torch.')} of shape {tuple(lr.shape)}: "
                f"store one float step size per stage, ({len(end)},).")
    ends = end.tolist()
    if ends[0] < 1 or any(b <= a for a, b in itertools.pairwise(ends)) or ends[-1] != rows:
        return f"{END!r} is {ends}: give strictly increasing counts from at least 1, the last equal to the {rows} rows of 'x'."
    rates = lr.tolist()
    if not all(math.isfinite(r) and r > 0 for r in rates):
        return f"{LR!r} is {rates}: store finite positive step sizes."
    if recipe.get("lr_from_artifact") is not None:
        return f"it declares lr_from_artifact={recipe['lr_from_artifact']!r} and stages: a staged artifact's step sizes are {LR!r}."
    if recipe.get("labels") == "class-balanced":
        sizes = [b - a for a, b in zip([0, *ends], ends)]
        if num_classes is None or any(s % num_classes for s in sizes):
            return (f"it declares class-balanced labels, but its stages add {sizes} rows, not multiples of the "
                    f"{num_classes} classes: store 'y' instead.")
    return None


def class_balanced_labels(ends: list[int], num_classes: int, device: torch.device) -> Tensor:
    """Labels implied by order within each stage: its new rows are ``n / C`` of class 0, then class 1..."""
    parts, start = [], 0
    for end in ends:
        parts.append(torch.arange(num_classes, device=device).repeat_interleave((end - start) // num_classes))
        start = end
    return torch.cat(parts)


def stage_parts(artifact: Artifact) -> list[tuple[Artifact, float]]:
    """The artifact's stages in training order: (the prefix of rows stage k trains on, its step
    size). ``stage.*`` tensors are left out of the prefixes; the recipe, meta and teacher are kept."""
    from ddbench.contracts.interfaces import Artifact

    tensors = artifact.tensors
    ends, rates = tensors[END].tolist(), tensors[LR].tolist()
    shared = {k: v for k, v in tensors.items() if k not in ROW_TENSORS and not k.startswith(PREFIX)}
    parts = []
    for end, lr in zip(ends, rates):
        rows = {k: tensors[k][:end] for k in ROW_TENSORS if k in tensors}
        parts.append((Artifact({**shared, **rows}, artifact.recipe, artifact.meta, artifact.teacher), float(lr)))
    return parts


def stage_tensors(ends: list[int], rates: Tensor) -> dict[str, Tensor]:
    """The two stage tensors for cumulative counts ``ends`` and step sizes ``rates`` (what a distiller stores)."""
    return {END: torch.tensor(ends, dtype=torch.int64, device=rates.device), LR: rates.detach().reshape(-1).clone()}
