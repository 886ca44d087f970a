"""DC's gradient-matching distance and per-class gradients batched over classes.

``docs/methods.md`` §5 (the distance) and §13.2 (batching the per-class gradients with
``torch.func``). Every gradient here is a list with one ``(C, *param_shape)`` tensor per network
parameter: row ``c`` is the gradient of class ``c``'s mean cross-entropy.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

DISTANCES = ("ours", "mse", "cos")
EPS = 1e-6  # added to the product of norms in every cosine (§5)


def check_distance(kind: str) -> str:
    if kind not in DISTANCES:
        raise ValueError(f"unknown matching distance {kind!r}: use one of {DISTANCES} (default 'ours', docs/methods.md §5).")
    return kind


def _output_rows(g: Tensor) -> Tensor | None:
    """A ``(C, *shape)`` gradient as ``(C, rows, cols)`` the way §5 compares it, or ``None`` for
    the tensors the distance skips (1-D: biases and norm scales/shifts).

    Conv weight (out, in, kh, kw) -> (out, in*kh*kw); linear (out, in) as is; 3-D (C, H, W) ->
    (C, H*W).
    """
    if g.dim() - 1 <= 1:
        return None
    return g.reshape(g.shape[0], g.shape[1], -1)


def gradient_distance(gs: Sequence[Tensor], gr: Sequence[Tensor], kind: str = "ours") -> Tensor:
    """Per-class distances ``(C,)`` between synthetic (``gs``) and real (``gr``) gradients (§5).

    ``ours``: sum over parameter tensors and, within each, over output rows of
    ``1 - <gs_i, gr_i> / (|gs_i| |gr_i| + 1e-6)``; 1-D tensors contribute 0. ``mse``: squared
    difference of all flattened gradients, biases included. ``cos``: 1 - cosine of all flattened
    gradients.
    """
    check_distance(kind)
    if len(gs) != len(gr) or not gs:
        raise ValueError(f"gradient_distance needs two equally long, non-empty gradient lists (got {len(gs)} and {len(gr)}).")
    if kind == "ours":
        total = gs[0].new_zeros(gs[0].shape[0])
        for a, b in zip(gs, gr):
            a, b = _output_rows(a), _output_rows(b)
            if a is None or b is None:
                continue
            cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + EPS)
            total = total + (1.0 - cos).sum(-1)
        return total
    a = torch.cat([g.flatten(1) for g in gs], 1)
    b = torch.cat([g.flatten(1) for g in gr], 1)
    if kind == "mse":
        return ((a - b) ** 2).sum(1)
    return 1.0 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + EPS)


def class_gradients(model: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
    """Gradients of the per-class mean cross-entropy for all classes in one vmapped call (§13.2).

    ``x``: ``(C, n, *input_shape)``, ``y``: ``(C, n)``. Returns one ``(C, *shape)`` tensor per
    parameter, in ``model.parameters()`` order. The parameters are taken detached, so the result
    is differentiable with respect to ``x`` (``torch.func`` composes with the outer autograd
    graph: that is the synthetic side of DC) and constant when ``x`` does not require grad (the
    real side). Exact for per-sample normalisation (instance/group/layer norm, frozen BN).
    """
    names = [name for name, _ in model.named_parameters()]
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p: dict[str, Tensor], xc: Tensor, yc: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, (p, buffers), (xc,)), yc)

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return [grads[name] for name in names]
