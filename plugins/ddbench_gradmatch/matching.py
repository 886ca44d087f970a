"""DC's gradient-matching distance, per-class gradients batched over classes, and the CPU's
per-class gradients computed in cache-sized blocks.

``docs/methods.md`` §5 (the distance) and §13.2 (batching the per-class gradients with
``torch.func``). Every gradient here is a list with one ``(C, *param_shape)`` tensor per network
parameter: row ``c`` is the gradient of class ``c``'s mean cross-entropy (:func:`class_gradient`
gives one class's, without the class axis).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

DISTANCES = ("ours", "mse", "cos")
EPS = 1e-6  # added to the product of norms in every cosine (§5)
# CPU blocks: the images of one forward/backward pass are cut into blocks whose largest activation
# takes at most this many bytes, so that a layer's output is still in cache when the next layer
# reads it. Measured on a 2-core AMD EPYC (2 MiB L2 per core, 32 MiB shared L3), one thread, the
# real side of one class of mnist5k (256 images, ConvNet-3 width 128, 512 KiB of first-layer
# activations per image): 2.05 s in one pass; 1.22 / 1.06 / 1.56 / 1.63 / 1.80 s in blocks of
# 8 / 16 / 32 / 64 / 128 images (medians of 5, interleaved). 8 MiB is 16 such images.
CPU_BLOCK_BYTES = 8 * 2**20
# Layers that treat every sample on its own (with their parameters fixed), so a batch's gradient is
# the sum of its blocks' gradients. Anything else (BatchNorm in train mode, dropout, an unknown
# layer) keeps whole batches.
PER_SAMPLE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.GroupNorm, nn.LayerNorm, nn.ReLU, nn.LeakyReLU,
                     nn.GELU, nn.SiLU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.AvgPool1d, nn.AvgPool2d, nn.MaxPool1d,
                     nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity)


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
        for sg, rg in zip(gs, gr):
            a, b = _output_rows(sg), _output_rows(rg)
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


def per_sample(model: nn.Module) -> bool:
    """Whether every leaf module of ``model`` treats each sample on its own in its current mode:
    the layers of :data:`PER_SAMPLE_LAYERS`, instance norm without running statistics, and
    BatchNorm in eval mode (DC's frozen statistics, §5)."""
    for module in model.modules():
        if next(module.children(), None) is not None:
            continue
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.training:
                return False
        elif isinstance(module, nn.modules.instancenorm._InstanceNorm):
            if module.track_running_stats and module.training:
                return False
        elif not isinstance(module, PER_SAMPLE_LAYERS):
            return False
    return True


def activation_bytes(model: nn.Module, example: Tensor) -> int:
    """Bytes of the largest activation (or input) one image of ``example``'s shape produces in
    ``model``, found by one forward pass of one image in eval mode without grad (so no running
    statistics move and no random number is drawn; every module's mode is restored afterwards)."""
    largest = [example[:1].numel() * example.element_size()]

    def record(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    modes = [(m, m.training) for m in model.modules()]
    hooks = [m.register_forward_hook(record) for m in model.modules() if next(m.children(), None) is None]
    try:
        model.eval()
        with torch.no_grad():
            model(example[:1])
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes:
            module.training = training
    return largest[0]


def cpu_block(model: nn.Module, example: Tensor, budget: int = CPU_BLOCK_BYTES) -> int:
    """Images per block on the CPU: ``budget`` bytes over :func:`activation_bytes`."""
    return max(1, budget // activation_bytes(model, example))


def class_gradient(model: nn.Module, params: Sequence[Tensor], x: Tensor, y: Tensor, create_graph: bool = False,
                   block: int | None = None) -> list[Tensor]:
    """The gradient of the mean cross-entropy of ``model`` on ``(x, y)`` (one class's images)
    with respect to ``params``, as ``torch.autograd.grad`` gives it (``create_graph``: kept
    differentiable in ``x``, DC's synthetic side).

    ``block`` (for a :func:`per_sample` model): forward and backward ``block`` images at a time and
    add up the blocks' gradients of ``sum of losses / len(x)``: the same gradient up to the order
    of floating-point summation, a fraction of the memory traffic (:data:`CPU_BLOCK_BYTES`).
    """
    n = len(x)
    if block is None or block >= n:
        return list(torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=create_graph))
    total: list[Tensor] | None = None
    for lo in range(0, n, block):
        loss = F.cross_entropy(model(x[lo : lo + block]), y[lo : lo + block], reduction="sum") / n
        part = torch.autograd.grad(loss, params, create_graph=create_graph)
        if total is None:
            total = list(part)
        elif create_graph:
            total = [a + b for a, b in zip(total, part)]
        else:
            for a, b in zip(total, part):
                a.add_(b)
    assert total is not None
    return total
