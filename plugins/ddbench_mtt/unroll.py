"""The student unroll of MTT and its gradient with respect to the synthetic set and the step size.

``docs/methods.md`` §7 (the unroll and the loss) and §8 (the gradient modes). The student is plain
SGD on one flat parameter vector::

    theta_{i+1} = theta_i - alpha * g_i,   g_i = grad_theta CE_mean(f(A_wi(S[idx_i]); theta_i), y[idx_i])
    L = ||theta_N - theta*||^2 / ||theta_0 - theta*||^2

Every mode takes a :class:`Step` schedule drawn in advance (batch indices and DSA parameters), so
the forward pass and any replay see the very same batches and transforms.

- ``unroll``: autograd through the stored graph of all N steps (memory grows with N).
- ``exact-constant-memory``: a forward pass without graph that stores only theta_i, then the
  adjoint recursion lambda_i = lambda_{i+1} - alpha H_i lambda_{i+1}, replaying one step at a time
  with a double backward (memory of one step plus N parameter vectors). Exact: equals ``unroll``.
- ``tesla-approx``: TESLA's released gradient, the same replay with lambda frozen at lambda_N
  (drops the cross-step Hessian terms): an approximation, labelled as such.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from ddbench.ops.augment import DSA, Transform, apply
from ddbench_mtt.flat import FlatModel

MODES = ("unroll", "exact-constant-memory", "tesla-approx")
EXACT_MODES = ("unroll", "exact-constant-memory")


@dataclass
class Step:
    """One student step: which synthetic rows it trains on and the per-sample DSA transform."""

    index: Tensor
    aug: Transform | None


@dataclass
class Gradients:
    """The normalised matching loss (detached) and its gradients w.r.t. S and alpha."""

    loss: Tensor
    images: Tensor
    alpha: Tensor


def draw_schedule(n: int, steps: int, batch: int, dsa: DSA | None, size: int, generator: torch.Generator,
                  device: torch.device) -> list[Step]:
    """``steps`` ``batch``-sized chunks of random permutations of the ``n`` synthetic rows, taken
    from the permutation's last chunk backwards (the official ``indices_chunks.pop()``, so a short
    remainder chunk comes first) with a new permutation when one is used up, each with a
    per-sample DSA draw (§4, §7), all the steps' DSA draws made at once."""
    plan = None if dsa is None else dsa.plan(steps, batch, size)
    schedule: list[Step] = []
    chunks: list[Tensor] = []
    for t in range(steps):
        if not chunks:
            chunks = list(torch.randperm(n, generator=generator, device=device).split(batch))
        index = chunks.pop()
        schedule.append(Step(index, None if plan is None else plan[t, : len(index)]))
    return schedule


def draw_start(low: int, high: int, generator: torch.Generator) -> int:
    """A start epoch uniform on [``low``, ``high``) (the official ``np.random.randint(low, high)``)."""
    return low + int(torch.randint(high - low, (1,), generator=generator))


def _batch(images: Tensor, step: Step) -> Tensor:
    x = images[step.index]
    return x if step.aug is None else apply(x, step.aug)


def _step_grad(model: FlatModel, theta: Tensor, images: Tensor, labels: Tensor, step: Step, create_graph: bool) -> Tensor:
    """g_i: the gradient of the mean cross-entropy at ``theta`` on the step's batch."""
    loss = F.cross_entropy(model(theta, _batch(images, step)), labels[step.index])
    return torch.autograd.grad(loss, theta, create_graph=create_graph)[0]


def _distance(theta: Tensor, target: Tensor, start: Tensor) -> Tensor:
    return (theta - target).pow(2).sum() / (start - target).pow(2).sum()


def unroll_gradients(model: FlatModel, images: Tensor, labels: Tensor, alpha: Tensor, start: Tensor, target: Tensor,
                     schedule: list[Step]) -> Gradients:
    """Mode ``unroll``: backpropagate through the stored graph of the whole unroll."""
    images = images.detach().requires_grad_(True)
    alpha = alpha.detach().requires_grad_(True)
    theta = start.detach().requires_grad_(True)
    for step in schedule:
        theta = theta - alpha * _step_grad(model, theta, images, labels, step, create_graph=True)
    loss = _distance(theta, target, start)
    g_images, g_alpha = torch.autograd.grad(loss, (images, alpha))
    return Gradients(loss.detach(), g_images, g_alpha)


def adjoint_gradients(model: FlatModel, images: Tensor, labels: Tensor, alpha: Tensor, start: Tensor, target: Tensor,
                      schedule: list[Step], exact: bool = True) -> Gradients:
    """Modes ``exact-constant-memory`` (``exact=True``) and ``tesla-approx`` (``exact=False``), §8.

    Forward without a graph, storing theta_i; then for i = N-1..0 replay step i with S requiring
    grad, take one double backward of g_i . lambda to get (H_i lambda, d(g_i . lambda)/dS), and
    accumulate dL/dS -= alpha d(g_i . lambda)/dS, dL/dalpha -= g_i . lambda, lambda -= alpha H_i lambda.
    """
    images, alpha, start = images.detach(), alpha.detach(), start.detach()
    thetas = []
    theta = start
    for step in schedule:
        theta_i = theta.detach().requires_grad_(True)
        thetas.append(theta_i)
        theta = (theta_i - alpha * _step_grad(model, theta_i, images, labels, step, create_graph=False)).detach()
    loss = _distance(theta, target, start)
    lam = 2.0 * (theta - target) / (start - target).pow(2).sum()
    g_images = torch.zeros_like(images)
    g_alpha = torch.zeros_like(alpha)
    for theta_i, step in zip(reversed(thetas), reversed(schedule)):
        replay = images.detach().requires_grad_(True)
        g = _step_grad(model, theta_i, replay, labels, step, create_graph=True)
        dot = (g * lam).sum()
        if exact:
            h, g_s = torch.autograd.grad(dot, (theta_i, replay))
            lam = lam - alpha * h
        else:
            (g_s,) = torch.autograd.grad(dot, (replay,))
        g_images -= alpha * g_s
        g_alpha -= dot.detach()
    return Gradients(loss, g_images, g_alpha)


def gradient_fn(mode: str) -> Callable[..., Gradients]:
    """The gradient function of a mode name; an unknown name is an error listing the modes."""
    if mode == "unroll":
        return unroll_gradients
    if mode == "exact-constant-memory":
        return adjoint_gradients
    if mode == "tesla-approx":
        return partial(adjoint_gradients, exact=False)
    raise ValueError(f"unknown gradient mode {mode!r}: use one of {', '.join(MODES)}.")
