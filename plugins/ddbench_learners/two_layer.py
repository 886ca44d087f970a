"""The width-L two-layer ReLU network trained by "one big first-layer step, then ridge".

Reconstruction (see specs/theory.md §3, after Damian, Lee & Soltanolkotabi 2022, Algorithm 1):
symmetric initialisation (f_theta0 = 0), label preprocessing y <- y - alpha - beta^T x, one
first-layer gradient step with weight decay 1/eta_1 that cancels W0 (closed form), bias
re-initialisation, then a ridge fit of the second layer (fp64 Cholesky). eta_1 = rho * sqrt(d);
``rho`` and the ridge ``lambda`` come from the task's public recipe (``options``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ddbench.interfaces import Artifact, Learner, Recipe, TaskView

CHUNK = 32768


class TwoLayer(nn.Module):
    """f(x) = alpha + beta^T x + sum_j a_j relu(w_j^T x + b_j), state held in buffers."""

    def __init__(self, d: int, width: int, seed: int):
        super().__init__()
        if width % 2:
            raise ValueError("the two-layer learner needs an even width (symmetric initialisation)")
        g = torch.Generator().manual_seed(seed)
        half = width // 2
        a = torch.randint(0, 2, (half,), generator=g).float() * 2 - 1
        w = torch.randn(half, d, generator=g)
        w = w / w.norm(dim=1, keepdim=True)  # uniform on the sphere
        b = torch.randn(half, generator=g)
        self.register_buffer("a", torch.cat([a, -a]))
        self.register_buffer("W", torch.cat([w, w]))
        self.register_buffer("b", torch.cat([b, b]))
        self.register_buffer("alpha", torch.zeros(()))
        self.register_buffer("beta", torch.zeros(d))
        self.reinit_seed = seed + 1

    def features(self, x: Tensor) -> Tensor:
        return torch.relu(x @ self.W.T + self.b)

    def forward(self, x: Tensor) -> Tensor:
        return self.alpha + x @ self.beta + self.features(x) @ self.a


def first_layer_step(model: TwoLayer, x: Tensor, y: Tensor, eta: float) -> Tensor:
    """W1 = -eta * grad_W L(theta0) for the mean-squared loss, with f_theta0 = 0 (closed form):
    w1_j = (2 eta a_j / m) sum_i y_i 1[w0_j^T x_i + b_j > 0] x_i. Chunked over the examples."""
    grad = torch.zeros_like(model.W)
    for i in range(0, len(x), CHUNK):
        xc, yc = x[i : i + CHUNK], y[i : i + CHUNK]
        gate = (xc @ model.W.T + model.b > 0).to(x.dtype)  # (m, L)
        grad += (gate * yc[:, None]).T @ xc
    return (2 * eta / len(x)) * model.a[:, None] * grad


def ridge_head(features: Tensor, y: Tensor, lam: float) -> Tensor:
    """a = (Phi^T Phi + m lam I)^-1 Phi^T y, solved in fp64 by Cholesky."""
    phi = features.double()
    gram = phi.T @ phi + len(phi) * lam * torch.eye(phi.shape[1], dtype=phi.dtype, device=phi.device)
    rhs = phi.T @ y.double()
    chol = torch.linalg.cholesky(gram)
    return torch.cholesky_solve(rhs[:, None], chol)[:, 0].to(features.dtype)


class TwoLayerLearner(Learner):
    """Width-L two-layer ReLU network, one-step feature learning then ridge (theory.md §3).

    Trains from an artifact's ``x`` and ``y`` (real points or a distilled set of points).
    """

    name = "two-layer"
    description = "width-L two-layer ReLU net: one big first-layer step, then ridge (theory task)"

    def __init__(self, width: int = 256):
        self.width = width

    def build(self, task: TaskView, seed: int) -> nn.Module:
        if len(task.input_shape) != 1:
            raise ValueError(f"two-layer needs vector inputs; task {task.name!r} has shape {task.input_shape}.")
        return TwoLayer(task.input_shape[0], self.width, seed)

    def fit(self, model: nn.Module, artifact: Artifact, recipe: Recipe, generator: torch.Generator) -> nn.Module:
        assert isinstance(model, TwoLayer)
        x, y = artifact.x.float(), artifact.y.float()
        eta = recipe.options.get("rho", 1.0) * math.sqrt(x.shape[1])
        model.alpha = y.mean()
        model.beta = (y[:, None] * x).mean(0)
        y = y - model.alpha - x @ model.beta
        model.W = first_layer_step(model, x, y, eta)
        g = torch.Generator().manual_seed(model.reinit_seed)
        model.b = torch.randn(len(model.b), generator=g).to(x.device)
        model.a = ridge_head(model.features(x), y, recipe.options.get("ridge", 1e-3))
        return model
