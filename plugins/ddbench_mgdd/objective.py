"""MGDD's matching objective and its label solve in a random feature space [ours, reconstructed
from the paper's description; no official code is public] (docs/methods.md §16).

For synthetic features F_s (N, D), real features F_r (B, D) and real one-hot targets Y_r, kernel
ridge regression from the synthetic set predicts P = K_rs (K_ss + lam I)^-1 Y_s, with K = F F^T.
The labels Y_s solve min ||M Y_s - Y_r||^2 + mu ||Y_s - Y_0||^2 with M = K_rs (K_ss + lam I)^-1
and Y_0 the one-hot labels of the synthetic rows; the loss is the mean squared residual at that
solution. ``lam`` and ``mu`` are relative to the mean diagonal of K_ss and of M^T M.
"""
from __future__ import annotations

import torch
from torch import Tensor


def solve(features_syn: Tensor, features_real: Tensor, targets_real: Tensor, onehot_syn: Tensor,
          lam: float, mu: float) -> tuple[Tensor, Tensor]:
    """(loss, labels): the residual of the kernel-ridge prediction of the real targets from the
    synthetic set at the least-squares labels, and those labels (N, C). Differentiable in both feature sets."""
    fs, fr = features_syn.double(), features_real.double()
    k_ss, k_rs = fs @ fs.T, fr @ fs.T
    n = len(fs)
    eye = torch.eye(n, dtype=fs.dtype, device=fs.device)
    ridge = lam * k_ss.diagonal().mean().clamp_min(1e-12)
    m = torch.linalg.solve(k_ss + ridge * eye, k_rs.T).T  # K_rs (K_ss + ridge I)^-1 (K_ss symmetric)
    gram = m.T @ m
    anchor = mu * gram.diagonal().mean().clamp_min(1e-12)
    labels = torch.linalg.solve(gram + anchor * eye, m.T @ targets_real.double() + anchor * onehot_syn.double())
    residual = m @ labels - targets_real.double()
    return residual.pow(2).sum(1).mean().float(), labels.float()


def as_distribution(labels: Tensor) -> Tensor:
    """Least-squares labels as rows of a distribution [ours]: negatives clipped to 0, rows
    renormalised (a row with no positive mass becomes uniform), so cross-entropy stays bounded."""
    clipped = labels.clamp_min(0)
    mass = clipped.sum(1, keepdim=True)
    uniform = torch.full_like(clipped, 1.0 / clipped.shape[1])
    return torch.where(mass > 0, clipped / mass.clamp_min(1e-12), uniform)
