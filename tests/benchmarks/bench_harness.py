"""Benchmarks of the harness's hot paths (pytest-benchmark).

Run and save:   python -m pytest tests/benchmarks --benchmark-enable --benchmark-autosave
Compare:        python -m pytest tests/benchmarks --benchmark-enable --benchmark-compare
Without --benchmark-enable (as in CI) each body runs once, as a test (tests/conftest.py).
"""
from __future__ import annotations

import pytest
import torch

from ddbench import Artifact, Budget, Recipe, RunContext
from ddbench.plugins import instantiate


@pytest.fixture(scope="module")
def setup(manager, digits):
    _, view, test = digits
    learner = instantiate(manager.learners.get("convnet"), {}, "quick")
    idx = torch.cat([view.class_index(c)[:10] for c in range(10)])
    return view, test, learner, Artifact({"x": view.train.x[idx], "y": view.train.y[idx]})


@pytest.mark.parametrize("augment", ["none", "dsa"])
def test_one_evaluation_epoch(benchmark, setup, augment):
    """One epoch of evaluation training (digits, ipc=10, ConvNet-3 quick width)."""
    view, _, learner, art = setup
    recipe = Recipe(epochs=0, augment=augment, dsa_strategy="color_crop_cutout_scale_rotate")
    model = learner.build(view, 0)
    before = [p.detach().clone() for p in model.parameters()]

    def epoch():
        learner.fit(model, art, recipe, torch.Generator().manual_seed(0))

    benchmark(epoch)
    after = [p.detach() for p in model.parameters()]
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))  # the epoch trained the model


@pytest.mark.parametrize("name", ["random", "herding"])
def test_baseline_distillation(benchmark, manager, setup, name):
    view, _, learner, _ = setup
    distiller = instantiate(manager.distillers.get(name), {"epochs": 1} if name == "herding" else {}, "quick")

    def distill():
        ctx = RunContext(torch.device("cpu"), 0, torch.Generator().manual_seed(0))
        return distiller.distill(view, Budget.parse("ipc=10"), learner, ctx)

    art = benchmark(distill)
    assert len(art.x) == 100


@pytest.mark.slow
def test_worker_round_trip(benchmark, harness, digits):
    """One distillation in a fresh cell worker and back (``random``, digits ipc=1): the isolation's
    cost per cell, on top of the distillation itself."""
    from ddbench.run.suite import DistillerEntry, Suite, TaskEntry

    _, view, _ = digits
    suite = Suite("bench", [TaskEntry("digits", [Budget.parse("ipc=1")])], [DistillerEntry("random")], "quick", 1, [0])
    cell = next(harness.cells(suite))
    random = harness.manager.distillers.get("random")
    reply = benchmark(lambda: harness._distill(random, {}, cell, view, cell.budget, None, ""))
    assert reply.status == "ok" and reply.tensors["x"].shape == (10, 1, 8, 8)


def test_evaluation_forward_on_test(benchmark, setup):
    view, test, learner, _ = setup
    model = learner.build(view, 0)
    out = benchmark(lambda: learner.predict(model, test.x))
    assert out.shape == (len(test.x), 10)
