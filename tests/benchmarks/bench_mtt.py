"""Time and memory of MTT's gradient modes versus syn_steps (``docs/methods.md`` §8, §12).

Run and save:   python -m pytest tests/benchmarks/bench_mtt.py -m "" --benchmark-enable --benchmark-autosave
Memory (bytes saved for backward, plus the adjoint modes' stored parameter vectors) is recorded in
each benchmark's ``extra_info["graph_mb"]``; ``test_memory_versus_syn_steps`` checks its shape.
On CUDA, ``python -m ddbench_mtt.measure --device cuda`` prints s/iteration and peak memory.
"""
from __future__ import annotations

import pytest
import torch

from ddbench_mtt.measure import graph_bytes, run_mode, setup
from ddbench_mtt.unroll import MODES

STEPS = (2, 4, 8)
# As a plain test the fast lane times each mode at the shortest unroll, the slow lane the longer ones
# (the same code at more steps); test_memory_versus_syn_steps runs all three in the fast lane.
GRID = [pytest.param(n, marks=() if n == STEPS[0] else pytest.mark.slow) for n in STEPS]


@pytest.fixture(scope="module")
def case(digits):
    """digits, ipc=2 (20 images), ConvNet-3 at the quick width (32)."""
    return setup("digits", 2, torch.device("cpu"), profile="quick")


def memory(case, mode: str, steps: int) -> int:
    return graph_bytes(mode, run_mode(case, mode, steps), steps, case["model"].size, case["start"].element_size())


@pytest.mark.parametrize("steps", GRID)
@pytest.mark.parametrize("mode", MODES)
def test_gradient_iteration(benchmark, case, mode, steps):
    """One MTT gradient (student unroll + gradient w.r.t. S and alpha)."""
    call = run_mode(case, mode, steps)
    benchmark.extra_info["graph_mb"] = memory(case, mode, steps) / 2**20
    out = benchmark(call)
    assert out.images.shape == case["images"].shape and torch.isfinite(out.loss)


def test_memory_versus_syn_steps(case):
    """unroll's graph grows linearly with syn_steps; the exact constant-memory mode's peak is about
    one step's graph (its size depends on the DSA family replayed) plus N stored parameter vectors."""
    unroll = [memory(case, "unroll", n) for n in STEPS]
    exact = [memory(case, "exact-constant-memory", n) for n in STEPS]
    per_step = (unroll[-1] - unroll[0]) / (STEPS[-1] - STEPS[0])
    assert unroll[1] > 1.8 * unroll[0] and unroll[2] > 1.8 * unroll[1]
    assert exact[-1] - exact[0] < 0.25 * per_step
    assert exact[0] < 1.5 * per_step and exact[-1] < unroll[-1] / 4
