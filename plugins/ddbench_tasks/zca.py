"""ZCA whitening as a task's fixed preprocessing (``docs/methods.md`` §1).

The map is kornia's ``ZCAWhitening`` as MTT builds it (``eps=0.1``, default ``unbiased=True``):
inputs flattened per example in (C, H, W) order, mean ``mu``, covariance
``S = (X - mu)^T (X - mu) / (N - 1)``, ``S = U diag(lambda) U^T`` and
``W = U diag((lambda + eps)^(-1/2)) U^T``; an example ``x`` maps to ``W (x - mu)`` (``W`` is
symmetric). Ours: the fit is in float64 and uses ``eigh`` (kornia: float32 SVD, equal for a
symmetric positive semi-definite matrix), and both passes go over the data in chunks, so
CIFAR's 3072 x 3072 map costs two float64 matrices and one chunk beside the data.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

EPS = 0.1  # MTT's ZCAWhitening(eps=0.1, compute_inv=True)
CHUNK = 4096  # examples per product


@dataclass(frozen=True)
class Zca:
    """A fitted whitening map: ``mean`` (D,) and symmetric ``matrix`` (D, D), float64."""

    mean: Tensor
    matrix: Tensor

    @classmethod
    def fit(cls, x: Tensor, eps: float = EPS) -> Zca:
        """The map of the examples ``x`` (N, ...), covariance normalised by N - 1 as kornia's default."""
        flat = x.reshape(len(x), -1)
        mean = torch.zeros(flat.shape[1], dtype=torch.float64)
        for c in flat.split(CHUNK):
            mean += c.double().sum(0)
        mean /= len(x)
        cov = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float64)
        for c in flat.split(CHUNK):
            centred = c.double() - mean
            cov.addmm_(centred.T, centred)
        eigenvalues, vectors = torch.linalg.eigh(cov / (len(x) - 1))
        scale = (eigenvalues.clamp(min=0) + eps).rsqrt()  # clamp: round-off below 0 (an SVD gives |lambda|)
        return cls(mean, (vectors * scale) @ vectors.T)

    def __call__(self, x: Tensor) -> Tensor:
        """``W (x - mu)`` of every example of ``x``, float32, same shape."""
        flat = x.reshape(len(x), -1)
        out = torch.empty(flat.shape, dtype=torch.float32)
        for start in range(0, len(x), CHUNK):
            out[start:start + CHUNK] = ((flat[start:start + CHUNK].double() - self.mean) @ self.matrix).float()
        return out.view(x.shape)
