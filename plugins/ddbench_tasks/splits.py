"""Fixed, seeded, stratified splitting shared by the built-in tasks."""
from __future__ import annotations

import torch
from torch import Tensor

from ddbench.contracts.interfaces import Split


def stratified_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split off ``fraction`` of every class (at least one example each) with a fixed seed.

    Returns ``(rest, held_out)``. Used to carve validation (and, where a dataset has no official
    test split, test) from train.
    """
    g = torch.Generator().manual_seed(seed)
    held: list[Tensor] = []
    for c in torch.unique(split.y):
        idx = torch.nonzero(split.y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        held.append(idx[: max(1, round(fraction * len(idx)))])
    held_idx = torch.cat(held).sort().values
    mask = torch.ones(len(split), dtype=torch.bool)
    mask[held_idx] = False
    return split.subset(torch.nonzero(mask).flatten()), split.subset(held_idx)
