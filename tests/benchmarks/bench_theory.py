"""Benchmarks of the two-stage distiller's loops (pytest-benchmark; CI runs them with --benchmark-disable).

Run: python -m pytest tests/benchmarks/bench_theory.py --benchmark-enable
"""
from __future__ import annotations

import pytest
import torch

from ddbench import RunContext
from ddbench_learners.two_layer import first_layer_grad, symmetric_init
from ddbench_theory.stage1 import match_gradients
from ddbench_theory.stage2 import fit_head_points

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
    benchmark(first_layer_grad, a, w, b, *data)


def test_stage1_fifty_steps(benchmark, data):
    benchmark(lambda: match_gradients(*data, WIDTH, 0, 4, context(), steps=50, lr=1e-2))


def test_stage2_ten_steps(benchmark, data):
    x, y = data
    s1 = match_gradients(x, y, WIDTH, 0, 4, context(), steps=50, lr=1e-2)
    a, w, b = symmetric_init(D, WIDTH, 0)
    w1 = -D**0.5 * first_layer_grad(a, w, b, s1.x, s1.y)
    benchmark(lambda: fit_head_points(w1, b, s1.x, x, y, WIDTH, 1e-3, context(), steps=10, lr=1e-2))
