"""Stage 1: gradient matching at the symmetric initialisation (docs/theory.md §4.1).

Reconstruction (see docs/theory.md). The M1 ~ r^2 distilled points (X~, y~) are fitted so that
their first-layer gradient at theta0, G~ = grad_W L_S1(theta0), matches the real one G on the
preprocessed real labels. Both gradients come from the closed form of
:func:`ddbench_theory.two_layer.first_layer_grad` (f_theta0 = 0): no double backward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ddbench.contracts.interfaces import RunContext
from ddbench_theory.two_layer import first_layer_grad, symmetric_init

LOSSES = ("cos-signed", "cos", "fro", "dc-cos")
INITS = ("real", "gaussian")
INIT_MODES = ("fixed", "random")
LABEL_MODES = ("nonneg", "free")
LOG_EVERY = 50  # docs/theory.md §4.1: log D every 50 steps
EPS = 1e-30


def matching_loss(g_syn: Tensor, g_real: Tensor, kind: str) -> Tensor:
    """Distance D between the distilled and real first-layer gradients (docs/theory.md §4.1).

    ``cos``: the spec's scale- and sign-free 1 - <G~, G>^2 / (||G~||^2 ||G||^2); ``cos-signed``
    (ddbench's default, see :func:`match_gradients`): scale-free 1 - <G~, G> / (||G~|| ||G||);
    ``fro``: ||G~ - G||^2 / ||G||^2 (collapses to G~ = 0 at M1 ~ r^2, kept for comparison);
    ``dc-cos``: DC's row-wise 1 - cosine, averaged over the L neurons.
    """
    if kind == "cos":
        inner = (g_syn * g_real).sum()
        return 1 - inner**2 / (g_syn.pow(2).sum() * g_real.pow(2).sum() + EPS)
    if kind == "cos-signed":
        inner = (g_syn * g_real).sum()
        return 1 - inner / (g_syn.norm() * g_real.norm() + EPS)
    if kind == "fro":
        return (g_syn - g_real).pow(2).sum() / (g_real.pow(2).sum() + EPS)
    if kind == "dc-cos":
        inner = (g_syn * g_real).sum(1)
        return (1 - inner / (g_syn.norm(dim=1) * g_real.norm(dim=1) + EPS)).mean()
    raise ValueError(f"unknown stage-1 loss {kind!r}: use one of {LOSSES}")


@dataclass
class Stage1Result:
    """The distilled S1 = (x, y) (labels already rescaled), its starting points, the final mismatch D
    and the loss log."""

    x: Tensor
    y: Tensor
    x_init: Tensor
    mismatch: float
    scale: float
    log: list[tuple[int, float]] = field(default_factory=list)
    stopped_early: bool = False


def theta0(d: int, width: int, seed: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The learner's symmetric theta0 = (a, W0, b0) for ``seed`` on ``device``."""
    a, w0, b0 = symmetric_init(d, width, seed)
    return a.to(device), w0.to(device), b0.to(device)


def match_gradients(x_real: Tensor, y_pre: Tensor, width: int, init_seed: int, m1: int, context: RunContext, *,
                    steps: int, lr: float, loss: str = "cos-signed", init: str = "real", labels: str = "nonneg",
                    init_mode: str = "fixed", weight_decay: float = 0.0, g_real: Tensor | None = None,
                    compile: bool = False) -> Stage1Result:
    """Adam on (X~, y~) with cosine decay for ``steps`` steps (docs/theory.md §4.1).

    ``init`` picks the starting points (``real``: M1 random real inputs and their preprocessed
    labels; ``gaussian``: N(0, I_d) and N(0, 1)). ``labels='nonneg'`` (default; a deviation from the
    spec, together with the default loss ``cos-signed``) starts from the labels' absolute values
    and projects them onto >= 0 after every step; ``free`` is the spec's signed, unconstrained
    labels. Why: the gradient on a point is proportional to its label, so with mixed signs a label
    that crosses zero freezes its point outside span(U); and the sign-free ``cos`` lets the
    dynamics chase the orientation -G, which non-negative labels cannot reach for a positive
    semi-definite E[grad^2 f*] (he2, he2+he3, degenerate). Measured at d=32, r=2, M1=4, K1=500,
    lr 1e-2: the spec's (cos, free) stayed below subspace overlap 0.9 on 4 of 4 distillation
    seeds (0.45-0.86); cos with |y| init but no projection failed 1 of 7 (overlap 0.43); (cos-signed,
    nonneg) reached 0.81-0.98 on all 9 (3 task seeds x 3 distillation seeds). Use ``free`` (and
    ``cos``) for links whose E[grad^2 f*] is indefinite.
    ``init_mode='fixed'`` matches at the theta0 of ``init_seed`` (the one the student uses);
    ``'random'`` (DC-style variant) draws a fresh theta0 every step. After the loop the labels
    are rescaled by s* = <G~, G> / ||G~||^2 at the fixed theta0 when the loss is scale-free.
    ``g_real``: the real gradient at the fixed theta0, when the caller computed it (e.g. streamed over
    regenerated chunks); ``x_real`` then only supplies the starting points. ``compile``: run the
    step's closed-form gradient of S1 and its loss through ``torch.compile`` (``ddbench theory-measure
    --compile``; it does not pay on the CPU).
    """
    if g_real is not None and init_mode != "fixed":
        raise ValueError("g_real (a precomputed real gradient) needs init_mode='fixed'")
    device, d = x_real.device, x_real.shape[1]
    gen = context.fork(1)
    if init == "real":
        idx = torch.randperm(len(x_real), generator=gen, device=device)[:m1]
        x0, y0 = x_real[idx].clone(), y_pre[idx].clone()
    elif init == "gaussian":
        x0 = torch.randn(m1, d, generator=gen, device=device)
        y0 = torch.randn(m1, generator=gen, device=device)
    else:
        raise ValueError(f"unknown stage-1 init {init!r}: use one of {INITS}")
    if labels == "nonneg":
        y0 = y0.abs()
    elif labels != "free":
        raise ValueError(f"unknown stage-1 labels {labels!r}: use one of {LABEL_MODES}")
    x_syn, y_syn = x0.clone().requires_grad_(True), y0.requires_grad_(True)
    groups: list[dict[str, Any]] = [{"params": [x_syn], "weight_decay": weight_decay}, {"params": [y_syn]}]
    opt = torch.optim.Adam(groups, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    grad_of, loss_of = first_layer_grad, matching_loss
    if compile:
        grad_of, loss_of = torch.compile(first_layer_grad, dynamic=False), torch.compile(matching_loss, dynamic=False)
    a, w0, b0 = theta0(d, width, init_seed, device)
    g_fixed = first_layer_grad(a, w0, b0, x_real, y_pre) if g_real is None else g_real
    fresh = torch.Generator().manual_seed(context.seed * 1_000_003 + 2)  # CPU: symmetric_init draws on the CPU
    logged: list[tuple[int, Tensor]] = []
    stopped = False
    for step in range(1, steps + 1):
        if init_mode == "random":
            a, w0, b0 = theta0(d, width, int(torch.randint(0, 2**62, (1,), generator=fresh)), device)
            g_real = first_layer_grad(a, w0, b0, x_real, y_pre)
        else:
            g_real = g_fixed
        dist = loss_of(grad_of(a, w0, b0, x_syn, y_syn), g_real, loss)
        opt.zero_grad(set_to_none=True)
        dist.backward()
        opt.step()
        sched.step()
        if labels == "nonneg":
            with torch.no_grad():
                y_syn.clamp_(min=0.0)
        if step % LOG_EVERY == 0 or step == steps:
            logged.append((step, dist.detach()))
            context.progress.update(step, steps, loss=dist.item(), stage=1)
            if context.should_stop():
                stopped = True
                break
    x_syn, y_syn = x_syn.detach(), y_syn.detach()
    a, w0, b0 = theta0(d, width, init_seed, device)
    g_syn = first_layer_grad(a, w0, b0, x_syn, y_syn)
    scale = 1.0
    if loss != "fro":  # docs/theory.md §4.1: Frobenius-optimal rescaling after a scale-free loss
        scale = float((g_syn * g_fixed).sum() / g_syn.pow(2).sum().clamp_min(EPS))
        y_syn, g_syn = scale * y_syn, scale * g_syn
    mismatch = float(matching_loss(g_syn, g_fixed, loss))
    log = [(s, float(v)) for s, v in logged]
    if not math.isfinite(mismatch):
        raise FloatingPointError(f"stage 1 diverged (D = {mismatch}): lower the two-stage option lr1.")
    return Stage1Result(x_syn, y_syn, x0.detach(), mismatch, scale, log, stopped)
