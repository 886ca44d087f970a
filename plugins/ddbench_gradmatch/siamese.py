"""Siamese DSA for class-stacked batches (docs/methods.md §4, as DC/DSA and DM use it).

For every class one transform omega (a family drawn uniformly, then one set of values) is drawn
and applied identically to every real and every synthetic image of that class.
"""
from __future__ import annotations

from torch import Tensor

from ddbench.ops.augment import DSA, Transform, apply


def siamese_per_class(real: Tensor, syn: Tensor, dsa: DSA) -> tuple[Tensor, Tensor]:
    """``real`` ``(C, B, c, h, w)`` and ``syn`` ``(C, n, c, h, w)`` -> both augmented, with one
    shared draw per class. Differentiable with respect to ``syn``."""
    if real.shape[0] != syn.shape[0]:
        raise ValueError(f"real and synthetic batches must stack the same classes (got {real.shape[0]} and {syn.shape[0]}).")
    return siamese_apply(real, syn, siamese_draw(dsa, real.shape[0], real.shape[-1]))


def siamese_draw(dsa: DSA, classes: int, size: int) -> Transform:
    """One siamese transform per class (a family and one set of values), leading shape ``(classes,)``."""
    return dsa.plan(classes, 1, size)[:, 0]


def siamese_apply(real: Tensor, syn: Tensor, omegas: Transform) -> tuple[Tensor, Tensor]:
    """:func:`siamese_per_class` with the draws given: ``omegas[c]`` augments class ``c`` of both
    (``real`` ``(C', B, ...)`` and ``syn`` ``(C', n, ...)`` for ``C'`` rows of ``omegas``)."""
    # real and synthetic apart: the real side stays outside the synthetic set's autograd graph
    out_real = apply(real.flatten(0, 1), omegas.repeat(real.shape[1])).view(real.shape)
    out_syn = apply(syn.flatten(0, 1), omegas.repeat(syn.shape[1])).view(syn.shape)
    return out_real, out_syn
