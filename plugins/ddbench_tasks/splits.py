"""Fixed, seeded, stratified splitting shared by the built-in tasks."""
from __future__ import annotations

import torch
from torch import Tensor

from ddbench.contracts.interfaces import Split


def stratified_indices(y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """``(rest, held_out)``: sorted indices, ``held_out`` being ``fraction`` of every class of the
    labels ``y`` (at least one example each), drawn with a fixed seed. Reads the labels only, so a
    memory-mapped split is carved without touching its images."""
    g = torch.Generator().manual_seed(seed)
    held: list[Tensor] = []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        held.append(idx[: max(1, round(fraction * len(idx)))])
    held_idx = torch.cat(held).sort().values
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[held_idx] = False
    return torch.nonzero(mask).flatten(), held_idx


def stratified_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split off ``fraction`` of every class (at least one example each) with a fixed seed.

    Returns ``(rest, held_out)``. Used to carve validation (and, where a dataset has no official
    test split, test) from train.
    """
    rest, held = stratified_indices(split.y, fraction, seed)
    return split.subset(rest), split.subset(held)
