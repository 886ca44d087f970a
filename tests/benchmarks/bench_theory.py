"""Benchmarks of the two-stage distiller's loops (pytest-benchmark; without --benchmark-enable
each body runs once, as a test).

Run: python -m pytest tests/benchmarks/bench_theory.py --benchmark-enable
"""
from __future__ import annotations

import pytest
import torch

from ddbench import RunContext
from ddbench_theory.stage1 import match_gradients
from ddbench_theory.stage2 import fit_head_points
from ddbench_theory.two_layer import feature_moments, first_layer_grad, symmetric_init

D, WIDTH, N = 32, 256, 8192


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen)
    y = x[:, 0] ** 2 + x[:, 1] ** 2 - 2
    return x, y


def context() -> RunContext:
    return RunContext(torch.device("cpu"), 0, torch.Generator().manual_seed(0))


def test_real_first_layer_gradient(benchmark, data):
    """The closed-form real-data gradient G (n = 8192, L = 256, d = 32)."""
    a, w, b = symmetric_init(D, WIDTH, 0)
    grad = benchmark(first_layer_grad, a, w, b, *data)
    assert grad.shape == (WIDTH, D) and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # neuron j + L/2 copies (w_j, b_j) with a negated output weight: its gradient is the negative of j's
    assert torch.equal(grad[WIDTH // 2:], -grad[: WIDTH // 2])


def test_stage1_fifty_steps(benchmark, data):
    s1 = benchmark(lambda: match_gradients(*data, WIDTH, 0, 4, context(), steps=50, lr=1e-2))
    assert s1.x.shape == (4, D) and s1.y.shape == (4,) and torch.isfinite(s1.x).all()
    assert (s1.y >= 0).all()  # the default non-negative labels
    assert 0.0 <= s1.mismatch < 1.0  # 1 - cos(G~, G): the distilled gradient leans towards the real one


def test_stage2_ten_steps(benchmark, data):
    x, y = data
    s1 = match_gradients(x, y, WIDTH, 0, 4, context(), steps=50, lr=1e-2)
    a, w, b = symmetric_init(D, WIDTH, 0)
    w1 = -D**0.5 * first_layer_grad(a, w, b, s1.x, s1.y)
    moments = feature_moments(w1, b, x, y)  # the real data's one pass, outside the timed body
    s2 = benchmark(lambda: fit_head_points(w1, b, s1.x, moments, WIDTH, 1e-3, context(), steps=10, lr=1e-2))
    assert s2.v.shape == (D,) and s2.t.shape == s2.y.shape == (WIDTH,) and torch.isfinite(s2.y).all()
    assert 0.0 < s2.best_loss <= s2.loss < 1.0  # relative to predicting 0: the head points fit some signal
