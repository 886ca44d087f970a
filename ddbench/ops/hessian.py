"""The trace of a loss's Hessian with respect to a model's weights (``docs/toolkit.md``): exact for
small models, Hutchinson's estimate for the rest. ``early_agreement`` uses it along a real probe run
(``docs/analyses.md`` §5).

A *loss* here is a function of a dict of weight tensors (names to tensors) returning a scalar, so
the weights may be a module's parameters or its buffers (the two-layer learner keeps its weights
in buffers): :func:`module_loss` builds one for a module and a batch.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

Loss = Callable[[dict[str, Tensor]], Tensor]
EXACT_CHUNK = 256  # basis vectors per vmapped batch of Hessian-vector products in exact_trace


def module_loss(model: nn.Module, x: Tensor, per_example: Callable[[Tensor], Tensor],
                names: list[str] | None = None) -> tuple[Loss, dict[str, Tensor]]:
    """The mean of ``per_example(model(x))`` as a function of the weights ``names`` (default: the
    parameters), with the weights' current values. Other buffers are copied per call, so BatchNorm's
    running statistics are left as they were."""
    named = {**dict(model.named_buffers()), **dict(model.named_parameters())}
    keys = [n for n, _ in model.named_parameters()] if names is None else names
    unknown = [n for n in keys if n not in named]
    if unknown:
        raise ValueError(f"{type(model).__name__} has no weights named {', '.join(unknown)}")
    values = {n: named[n].detach() for n in keys}
    fixed = {n: b for n, b in model.named_buffers() if n not in values}

    def loss(w: dict[str, Tensor]) -> Tensor:
        out = functional_call(model, {**{n: b.clone() for n, b in fixed.items()}, **w}, (x,))
        return per_example(out).mean()
    return loss, values


def _flat(weights: dict[str, Tensor]) -> tuple[Tensor, Callable[[Tensor], dict[str, Tensor]]]:
    names = list(weights)
    shapes = [weights[n].shape for n in names]
    sizes = [weights[n].numel() for n in names]
    flat = torch.cat([weights[n].reshape(-1) for n in names])

    def unflatten(v: Tensor) -> dict[str, Tensor]:
        return {n: part.view(shape) for n, part, shape in zip(names, v.split(sizes), shapes)}
    return flat, unflatten


def hvp_function(loss: Loss, weights: dict[str, Tensor]) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """``v -> H v`` at ``weights`` on flat vectors (forward-over-reverse), and the flat weights."""
    flat, unflatten = _flat(weights)
    gradient = grad(lambda v: loss(unflatten(v)))

    def hvp(v: Tensor) -> Tensor:
        return jvp(gradient, (flat,), (v,))[1]
    return hvp, flat


def exact_trace(loss: Loss, weights: dict[str, Tensor], chunk: int = EXACT_CHUNK) -> float:
    """The Hessian's trace as the sum of e_i^T H e_i over every weight (P Hessian-vector products,
    vmapped ``chunk`` at a time): for models of a few thousand weights."""
    hvp, flat = hvp_function(loss, weights)
    p = flat.numel()
    total = torch.zeros((), dtype=torch.float64, device=flat.device)
    batched = vmap(hvp)
    for start in range(0, p, chunk):
        idx = torch.arange(start, min(start + chunk, p), device=flat.device)
        basis = torch.zeros(len(idx), p, dtype=flat.dtype, device=flat.device)
        basis[torch.arange(len(idx)), idx] = 1
        total += batched(basis)[torch.arange(len(idx)), idx].double().sum()
    return float(total)


def hutchinson_trace(loss: Loss, weights: dict[str, Tensor], generator: torch.Generator, max_probes: int = 100,
                     rtol: float = 1e-3) -> tuple[float, int]:
    """Hutchinson's estimate mean_k v_k^T H v_k with Rademacher vectors v_k drawn from ``generator``;
    stops when one more probe moves the running mean by at most ``rtol`` of its size, or after
    ``max_probes``. Returns (estimate, probes used)."""
    hvp, flat = hvp_function(loss, weights)
    p = flat.numel()
    mean, k = 0.0, 0
    for k in range(1, max_probes + 1):
        v = (torch.randint(0, 2, (p,), generator=generator, device=generator.device).to(flat.device, flat.dtype) * 2 - 1)
        sample = float((v * hvp(v)).sum())
        previous, mean = mean, mean + (sample - mean) / k
        if k > 1 and abs(mean - previous) <= rtol * (abs(previous) + 1e-6):
            break
    return mean, k


def hessian_trace(loss: Loss, weights: dict[str, Tensor], method: str, generator: torch.Generator,
                  max_probes: int = 100, rtol: float = 1e-3) -> tuple[float, str]:
    """The trace by ``method``: ``exact``, ``hutchinson``, or ``auto`` (exact when there are at most
    ``max_probes`` weights, where it costs no more products than the estimate may). Returns (trace,
    the method used)."""
    if method not in ("auto", "exact", "hutchinson"):
        raise ValueError(f"hessian method must be auto, exact or hutchinson (got {method!r})")
    p = sum(t.numel() for t in weights.values())
    if method == "exact" or (method == "auto" and p <= max_probes):
        return exact_trace(loss, weights), "exact"
    return hutchinson_trace(loss, weights, generator, max_probes, rtol)[0], "hutchinson"
