"""Siamese DSA for class-stacked batches (methods.md §4, as DC/DSA and DM use it).

For every class one transform omega (a family drawn uniformly, then one set of values) is drawn
and applied identically to every real and every synthetic image of that class.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ddbench.augment import DSA, AugParams, apply_grouped


def broadcast(params: AugParams, n: int) -> AugParams:
    """A one-row (siamese) draw repeated for a batch of ``n`` images."""
    return AugParams(params.family, {k: v[:1].expand(n) for k, v in params.values.items()})


def siamese_per_class(real: Tensor, syn: Tensor, dsa: DSA) -> tuple[Tensor, Tensor]:
    """``real`` ``(C, B, c, h, w)`` and ``syn`` ``(C, n, c, h, w)`` -> both augmented, with one
    shared draw per class. Differentiable with respect to ``syn``."""
    if real.shape[0] != syn.shape[0]:
        raise ValueError(f"real and synthetic batches must stack the same classes (got {real.shape[0]} and {syn.shape[0]}).")
    omegas = [dsa.draw(1, real.shape[-1], siamese=True) for _ in range(real.shape[0])]
    # real and synthetic apart: the real side stays outside the synthetic set's autograd graph
    out_real = apply_grouped(list(real), [broadcast(omega, real.shape[1]) for omega in omegas])
    out_syn = apply_grouped(list(syn), [broadcast(omega, syn.shape[1]) for omega in omegas])
    return torch.stack(out_real), torch.stack(out_syn)
