"""Stage 2: Theta(L) points on one stored direction that carry the ridge head (docs/theory.md §4.2, option b).

Reconstruction (see docs/theory.md). S2 = {(t_k v, y'_k)}, k <= M2: along the line {t v} every
feature relu(t (w~1_j^T v) + b_j) is a ramp with a kink at t = -b_j / (w~1_j^T v), so M2 = L
positions interleaving the kinks give a generically invertible L x L feature matrix and the
unchanged ridge learner can reproduce any head. (t, y') are fitted by KIP-style performance
matching from one chunked pass over the real data: C = Phi^T Phi / n, h = Phi^T y / n,
q = mean(y^2) give the real loss J(a) = a^T C a - 2 h^T a + q of any head exactly. ddbench's
objective adds the learner's ridge term, J(a) + lam ||a||^2 (minimised by the real-data ridge head
a*), and starts from the labels that minimise it in closed form (docs/theory.md §4.2, "ddbench's
choices in stage 2"). Solves are fp64 (docs/theory.md §4.2, §8).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ddbench.contracts.interfaces import RunContext
from ddbench_theory.two_layer import grid_positions, ridge_from_moments

OBJECTIVES = ("perf-match", "param-match")
LABEL_STARTS = ("solve", "head", "zero")
LOG_EVERY = 50
KINK_TOL = 1e-6  # neurons with |w~1_j^T v| below this (relative to the largest) have no kink on the line


@dataclass
class Stage2Result:
    """The stored direction, positions and labels, the final relative loss and the loss log."""

    v: Tensor
    t: Tensor
    y: Tensor
    loss: float
    best_loss: float
    log: list[tuple[int, float]] = field(default_factory=list)
    stopped_early: bool = False


def direction(x1: Tensor, generator: torch.Generator) -> Tensor:
    """v: a unit random combination of the rows of X~ (inside span(X~) ~ span(U))."""
    coef = torch.randn(len(x1), generator=generator, device=x1.device)
    v = coef @ x1
    return v / v.norm().clamp_min(1e-12)


def kink_positions(slopes: Tensor, b: Tensor, m2: int) -> Tensor:
    """M2 positions at evenly spaced quantiles (k + 1/2) / M2 of the kinks -b_j / s_j.

    Neurons without a kink on the line (|s_j| ~ 0, e.g. zero rows of W~1) are left out; with the
    linear interpolation between sorted kinks a position falls between two kinks, not on one.
    """
    has_kink = slopes.abs() > KINK_TOL * slopes.abs().max().clamp_min(1e-30)
    if int(has_kink.sum()) < 2:
        raise ValueError("stage 2 found fewer than two ReLU kinks on the stored direction: stage 1 produced a "
                         "degenerate first layer; raise m1 or steps1.")
    kinks = (-b[has_kink] / slopes[has_kink]).double()
    levels = (torch.arange(m2, device=b.device, dtype=torch.float64) + 0.5) / m2
    return torch.quantile(kinks, levels)


def head_from_points(t: Tensor, y: Tensor, slopes: Tensor, b: Tensor, lam: float) -> Tensor:
    """a(S2) = (Phi~^T Phi~ + M2 lam I)^-1 Phi~^T y' with Phi~ = relu(t s^T + b), differentiable, fp64.

    With fewer points than neurons (M2 < L) the same head is computed in the dual form
    Phi~^T (Phi~ Phi~^T + M2 lam I)^-1 y' (an M2 x M2 solve instead of L x L)."""
    return label_map(t, slopes, b, lam) @ y


def label_map(t: Tensor, slopes: Tensor, b: Tensor, lam: float) -> Tensor:
    """The L x M2 matrix A with a(S2) = A y': ridge on S2 is linear in the labels."""
    phi = torch.relu(t[:, None] * slopes[None, :] + b[None, :])
    m2, width = phi.shape
    if m2 < width:
        kernel = phi @ phi.T + m2 * lam * torch.eye(m2, dtype=phi.dtype, device=phi.device)
        return torch.linalg.solve(kernel, phi).T
    gram = phi.T @ phi + m2 * lam * torch.eye(width, dtype=phi.dtype, device=phi.device)
    return torch.linalg.solve(gram, phi.T)


def solve_labels(t: Tensor, slopes: Tensor, b: Tensor, lam: float, metric: Tensor, target: Tensor) -> Tensor:
    """The labels y' that minimise (A y')^T metric (A y') - 2 target^T A y' for the positions ``t``, exactly.

    Perf-match passes (C, h), param-match (I, a*). The objective is a quadratic in y' (the head is
    linear in the labels), so its minimiser is one M2 x M2 solve; the minimum-norm one is taken
    (eigenvalues below 1e-12 of the largest are dropped), in fp64."""
    a_map = label_map(t, slopes, b, lam)
    quad = a_map.T @ metric @ a_map
    evals, evecs = torch.linalg.eigh((quad + quad.T) / 2)
    keep = evals > evals.max().clamp_min(0) * 1e-12
    basis = evecs[:, keep]
    return basis @ ((basis.T @ (a_map.T @ target)) / evals[keep])


def fit_head_points(w1: Tensor, b: Tensor, x1: Tensor, moments: tuple[Tensor, Tensor, Tensor], m2: int, lam: float,
                    context: RunContext, *, steps: int, lr: float, objective: str = "perf-match",
                    labels: str = "solve", learn_v: bool = False, grid: float | None = None) -> Stage2Result:
    """Fit S2 for the student's first layer ``w1`` and re-initialised biases ``b`` (docs/theory.md §4.2).

    ``grid`` (variant ``(b)-grid``): positions fixed on the public grid of half-width ``grid``,
    only the labels are learned. ``learn_v`` also optimises the direction. ``labels``: the starting
    labels, ``head`` (the spec's warm start Phi~(t) a*), ``zero``, or ``solve`` (default; a ddbench
    choice): the exact minimiser of the objective over y' at the starting positions
    (:func:`solve_labels`), solved again at the final positions after the Adam steps. Measured at
    d=128, r=3, L=1024, n=18,000 (docs/theory.md §4.2): at M2 = L/4 the relative real loss J/q is
    0.279 from ``head`` with no step, 0.088 after 200 Adam steps, 0.082 from ``solve`` with no step
    (best ridge head on real data: 0.079). ``moments``: (C, h, q), the real data's feature moments of
    (``w1``, ``b``) (:func:`~ddbench_theory.two_layer.feature_moments`, or streamed), the only way the
    real data enters stage 2.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown stage-2 objective {objective!r}: use one of {OBJECTIVES}")
    if labels not in LABEL_STARTS:
        raise ValueError(f"unknown stage-2 labels {labels!r}: use one of {LABEL_STARTS}")
    gram, rhs, q = moments
    a_star = ridge_from_moments(gram, rhs, lam)

    def real_loss(a: Tensor) -> Tensor:
        """J(a) / q: the exact real-data loss of head ``a``, relative to predicting 0."""
        return (a @ gram @ a - 2 * rhs @ a + q) / q

    def ridge_loss(a: Tensor) -> Tensor:
        """(J(a) + lam ||a||^2) / q: the learner's own ridge objective on the real data, minimised by a*."""
        return real_loss(a) + lam * a.pow(2).sum() / q

    w64, b64 = w1.double(), b.double()
    v = direction(x1, context.fork(3)).float().double()  # the stored (fp32) direction, as the student reads it
    if grid is None:
        t = kink_positions(w64 @ v, b64, m2).float().double()  # likewise the stored positions
    else:
        t = grid_positions(m2, grid, b.device).double()
    eye = torch.eye(len(b), dtype=gram.dtype, device=gram.device)
    metric, target = (gram + lam * eye, rhs) if objective == "perf-match" else (eye, a_star)

    def best_labels(t: Tensor, v: Tensor) -> Tensor:
        return solve_labels(t, w64 @ (v / v.norm()), b64, lam, metric, target)

    with torch.no_grad():
        if labels == "solve":
            y2 = best_labels(t, v)
        elif labels == "head":
            y2 = torch.relu(t[:, None] * (w64 @ v)[None, :] + b64) @ a_star
        else:
            y2 = torch.zeros_like(t)
    params = [y2.requires_grad_(True)]
    if grid is None:
        params.append(t.requires_grad_(True))
    if learn_v:
        params.append(v.requires_grad_(True))
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))

    def loss_of(t: Tensor, y2: Tensor, v: Tensor) -> Tensor:
        slopes = w64 @ (v / v.norm())
        a = head_from_points(t, y2, slopes, b64, lam)
        if objective == "param-match":
            return (a - a_star).pow(2).sum() / a_star.pow(2).sum()
        return ridge_loss(a)

    logged: list[tuple[int, Tensor]] = []
    stopped = False
    for step in range(1, steps + 1):
        loss = loss_of(t, y2, v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % LOG_EVERY == 0 or step == steps:
            logged.append((step, loss.detach()))
            context.progress.update(step, steps, loss=loss.item(), stage=2)
            if context.should_stop():
                stopped = True
                break
    v = (v / v.norm()).detach().float().double()
    t = t.detach().float().double()
    with torch.no_grad():
        y2 = best_labels(t, v) if labels == "solve" and steps > 0 else y2.detach()
        final = real_loss(head_from_points(t, y2, w64 @ v, b64, lam))
    return Stage2Result(v.float(), t.float(), y2.float(), float(final), float(real_loss(a_star)),
                        [(s, float(x)) for s, x in logged], stopped)
