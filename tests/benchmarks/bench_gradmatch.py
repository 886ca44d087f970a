"""Benchmarks of the gradient-matching plugin's hot paths at a small CPU size (pytest-benchmark):
one outer iteration of dc, dsa and dm (digits, quick profile: ConvNet-3 width 32), and one batched
matching step. GPU seconds per iteration and peak memory: ``python -m ddbench_gradmatch.timing``.

Run:   python -m pytest tests/benchmarks/bench_gradmatch.py --benchmark-enable
"""
from __future__ import annotations

import pytest
import torch

from ddbench import Budget, RunContext
from ddbench.plugins import instantiate
from ddbench_gradmatch.matching import class_gradients, gradient_distance


@pytest.fixture(scope="module")
def setup(manager, digits):
    _, view, _ = digits
    return view, instantiate(manager.learners.get("convnet"), {}, "quick")


@pytest.mark.parametrize("ipc", [1, 10])
@pytest.mark.parametrize("name", ["dc", "dsa", "dm"])
def test_one_outer_iteration(benchmark, manager, setup, name, ipc):
    """One outer iteration in the quick profile (dc/dsa: one image update, 32 real per class)."""
    view, learner = setup
    distiller = instantiate(manager.distillers.get(name), {"iterations": 1}, "quick")

    def distill():
        ctx = RunContext(torch.device("cpu"), 0, torch.Generator().manual_seed(0), profile="quick")
        return distiller.distill(view, Budget.parse(f"ipc={ipc}"), learner, ctx)

    art = benchmark(distill)
    assert art.x.shape == (10 * ipc, 1, 8, 8)


def test_batched_matching_step(benchmark, setup):
    """Real and synthetic per-class gradients (vmapped over 10 classes) and the distance's backward."""
    view, learner = setup
    net = learner.build(view, 0)
    g = torch.Generator().manual_seed(0)
    real, syn = torch.randn(10, 32, 1, 8, 8, generator=g), torch.randn(10, 10, 1, 8, 8, generator=g, requires_grad=True)
    labels = torch.arange(10)[:, None]

    def step():
        gr = class_gradients(net, real, labels.expand(10, 32))
        gs = class_gradients(net, syn, labels.expand(10, 10))
        loss = gradient_distance(gs, gr).sum()
        (grad,) = torch.autograd.grad(loss, syn)
        return grad

    assert torch.isfinite(benchmark(step)).all()
