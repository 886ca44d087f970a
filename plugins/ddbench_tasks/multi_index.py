"""The synthetic multi-index regression task of ``specs/theory.md`` §2 (a reconstruction).

x ~ N(0, I_d); y = g(U^T x) + noise with U (d x r, orthonormal columns, QR of a seeded Gaussian).
U is known to this task (for scoring and diagnostics) and never shown to distillers or learners.
The test split is fresh Gaussian inputs with **noise-free** targets f*(x), so R^2 = 1 - MSE/Var(f*).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ddbench.interfaces import Artifact, Recipe, Split, Task, TaskData

LINKS = ("he2", "he2+he3", "degenerate")


def he2(z: Tensor) -> Tensor:
    return z**2 - 1


def he3(z: Tensor) -> Tensor:
    return z**3 - 3 * z


def link_fn(name: str, z: Tensor) -> Tensor:
    """g(z) for z = U^T x of shape (N, r); each link has E g = 0, E g^2 = 1, no linear part."""
    r = z.shape[1]
    if name == "he2":
        return he2(z).sum(1) / math.sqrt(2 * r)
    if name == "he2+he3":
        return (he2(z).sum(1) / math.sqrt(2 * r) + he3(z[:, 0]) / math.sqrt(6)) / math.sqrt(2)
    if name == "degenerate":
        return (he2(z[:, 0]) / math.sqrt(2) + z[:, 0] * z[:, 1] * z[:, 2]) / math.sqrt(2)
    raise ValueError(f"unknown link {name!r}: use one of {LINKS}")


class MultiIndex(Task):
    """Gaussian multi-index regression y = g(U^T x) + N(0, noise^2) (theory.md §2).

    Options: ``d`` input dimension, ``r`` intrinsic dimension, ``link`` (he2, he2+he3,
    degenerate), ``noise`` label noise std, ``n`` train examples (validation is carved from them),
    ``n_test`` fresh test inputs, ``seed`` (draws U and every split).
    """

    name = "multi-index"
    description = "synthetic Gaussian multi-index regression y = g(U^T x) + noise (generated)"
    kind = "regression"
    metric = "r2"
    default_learner = "two-layer"
    num_classes = None
    quick = {"n_test": 20000}

    def __init__(self, d: int = 32, r: int = 2, link: str = "he2", noise: float = 0.1, n: int = 8192,
                 n_test: int = 100_000, val_fraction: float = 0.1, seed: int = 0):
        if link not in LINKS:
            raise ValueError(f"unknown link {link!r}: use one of {LINKS}")
        if link == "degenerate" and r < 3:
            raise ValueError("link 'degenerate' needs r >= 3")
        if not 1 <= r <= d:
            raise ValueError("need 1 <= r <= d")
        self.d, self.r, self.link, self.noise = d, r, link, noise
        self.n, self.n_test, self.val_fraction, self.seed = n, n_test, val_fraction, seed
        self.input_shape = (d,)
        g = torch.Generator().manual_seed(seed)
        self.U = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0].float()
        self._data: TaskData | None = None

    def target(self, x: Tensor) -> Tensor:
        """The noise-free f*(x)."""
        return link_fn(self.link, x @ self.U.to(x.device))

    def load(self) -> TaskData:
        if self._data is None:
            g = torch.Generator().manual_seed(self.seed + 1)
            x = torch.randn(self.n, self.d, generator=g)
            y = self.target(x) + self.noise * torch.randn(self.n, generator=g)
            n_val = max(1, round(self.val_fraction * self.n))
            xt = torch.randn(self.n_test, self.d, generator=g)
            self._data = TaskData(Split(x[n_val:], y[n_val:]), Split(x[:n_val], y[:n_val]), Split(xt, self.target(xt)))
        return self._data

    def recipe(self, profile: str) -> Recipe:
        """The two-layer learner's public settings: step-size factor rho (eta_1 = rho sqrt(d)) and
        ridge lambda. Fixed defaults here; see theory.md §3 for their calibration."""
        return Recipe(epochs=0, batch_size=0, options={"rho": 1.0, "ridge": 1e-3})

    def info(self) -> dict[str, Any]:
        return {"data": "vector", "d": self.d, "r": self.r, "link": self.link, "theory_budget": self.r**2 * self.d}

    def alignment(self, x: Tensor) -> float:
        """mean_k ||P_U x_k|| / ||x_k|| (1 = every row inside span(U))."""
        x = x.float().cpu()
        return ((x @ self.U).norm(dim=1) / x.norm(dim=1).clamp_min(1e-12)).mean().item()

    def artifact_metrics(self, artifact: Artifact) -> dict[str, float]:
        key = "x1" if "x1" in artifact.tensors else "x"
        if key not in artifact.tensors:
            return {}
        return {"alignment": self.alignment(artifact.tensors[key])}
