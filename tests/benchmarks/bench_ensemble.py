"""Sequential versus vmapped-ensemble evaluation training (docs/methods.md §13.3), pytest-benchmark.

K = 1, 5, 10 ConvNet-3 models (width 16) on random tensors of MNIST (1x28x28) and CIFAR-10
(3x32x32) shapes, ipc=10 (100 images, one batch), per-sample DSA, 10 epochs (one block of draws). Compare the
``sequential`` and ``ensemble`` rows of one shape and K:

    OMP_NUM_THREADS=1 python -m pytest tests/benchmarks/bench_ensemble.py --benchmark-enable -m "" \\
        --benchmark-group-by=param:shape,param:k --benchmark-columns=mean,stddev,rounds

As a plain test (benchmarks disabled) the slow lane runs K = 5 of both shapes, once each; the other
sizes only matter to a measurement (``measure``: they run with ``--benchmark-enable``).

The GPU measurement at full width lives in ``ensemble_speed.py`` beside this file.
"""
from __future__ import annotations

import pytest
import torch

from ddbench import Artifact, Recipe
from ddbench.ops.ensemble import train_ensemble
from ddbench.ops.training import train_classifier
from ddbench_learners.convnet import ConvNet

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
GRID = [pytest.param(shape, k, marks=() if k == 5 else pytest.mark.measure) for shape in SHAPES for k in (1, 5, 10)]
RECIPE = Recipe(epochs=9, augment="dsa", dsa_strategy="color_crop_cutout_flip_scale_rotate")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sequential", "ensemble"])
@pytest.mark.parametrize("shape, k", GRID)
def test_evaluation_training(benchmark, shape, k, mode):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, *SHAPES[shape], generator=gen)
    y = torch.arange(10).repeat_interleave(10)
    models = [ConvNet(SHAPES[shape], 10, width=16) for _ in range(k)]

    def train() -> None:
        generators = [torch.Generator().manual_seed(s) for s in range(k)]
        if mode == "ensemble":
            train_ensemble(models, x, y, RECIPE, generators)
        else:
            for model, g in zip(models, generators):
                train_classifier(model, Artifact({"x": x, "y": y}), RECIPE, g)

    benchmark.pedantic(train, rounds=3, warmup_rounds=1)
    assert all(torch.isfinite(p).all() for m in models for p in m.parameters())
