"""Learners: ConvNet-3 matches the spec's parameter counts; builds are seeded; training follows the recipe."""
from __future__ import annotations

import pytest
import torch

from ddbench import Artifact, Recipe, Split, TaskView
from ddbench.plugins import instantiate


def view(shape, classes=10) -> TaskView:
    empty = Split(torch.zeros(0, *shape), torch.zeros(0, dtype=torch.long))
    return TaskView("t", "classification", classes, shape, empty, empty)


@pytest.mark.parametrize("shape, classes, params", [((1, 8, 8), 10, 298_506), ((1, 28, 28), 10, 317_706),
                                                     ((3, 32, 32), 10, 320_010), ((3, 32, 32), 100, 504_420)])
def test_convnet3_parameter_counts(manager, shape, classes, params):
    """docs/methods.md §2."""
    model = instantiate(manager.learners.get("convnet"), {}).build(view(shape, classes), seed=0)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.features[0].padding == ((3, 3) if shape[0] == 1 else (1, 1))
    assert isinstance(model.features[1], torch.nn.GroupNorm) and model.features[1].num_groups == 128


@pytest.mark.parametrize("depth, shape, classes, params", [(18, (3, 32, 32), 10, 11_173_962), (34, (3, 32, 32), 10, 21_282_122),
                                                            (18, (1, 28, 28), 10, 11_172_810)])
def test_resnet_cifar_form_parameter_counts(manager, depth, shape, classes, params):
    """docs/methods.md §2.1: the CIFAR form keeps the input size through a 3x3 stride-1 stem with no max-pool."""
    model = instantiate(manager.learners.get("resnet"), {"depth": depth}).build(view(shape, classes), seed=0)
    assert sum(p.numel() for p in model.parameters()) == params
    stem = model.features[0]
    assert (stem.kernel_size, stem.stride) == ((3, 3), (1, 1)) and not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    x = torch.randn(2, *shape)
    assert model(x).shape == (2, classes) and model.features[:-2](x).shape[-3:] == (512, -(-shape[1] // 8), -(-shape[2] // 8))


@pytest.mark.slow
def test_resnet_trains_on_a_small_set(manager):
    """Quick width on 8x8 inputs, BatchNorm in train mode: a few epochs fit twenty points, and the K
    nets of a fit_ensemble train one by one (no vmapped ensemble)."""
    learner = instantiate(manager.learners.get("resnet"), {}, "quick")
    gen = torch.Generator().manual_seed(0)
    art = Artifact({"x": torch.randn(20, 1, 8, 8, generator=gen), "y": torch.arange(10).repeat(2)})
    task = view((1, 8, 8))
    models = [learner.build(task, s) for s in (0, 1)]
    mode = learner.fit_ensemble(models, art, Recipe(epochs=30, lr=0.05, batch_size=10), [torch.Generator().manual_seed(s) for s in (0, 1)])
    assert mode.startswith("sequential")
    for model in models:
        assert (learner.predict(model, art.x).argmax(1) == art.y).float().mean() >= 0.9


@pytest.mark.parametrize("learner", ["convnet", "mlp", "resnet"])
def test_build_is_seeded_and_leaves_global_rng_alone(manager, learner):
    cls = manager.learners.get(learner)
    state = torch.random.get_rng_state()
    a, b, c = (instantiate(cls, {}, "quick").build(view((1, 8, 8)), seed=s) for s in (3, 3, 4))
    assert torch.equal(torch.random.get_rng_state(), state)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_training_decays_lr_once_after_epoch_e_half_plus_one(manager, monkeypatch):
    """evaluate_synset: epochs 0..E, lr x0.1 after epoch index E//2 + 1 (optimiser rebuilt)."""
    made = []
    real_sgd = torch.optim.SGD

    def spy(params, lr, **kw):
        made.append(lr)
        return real_sgd(params, lr=lr, **kw)

    monkeypatch.setattr(torch.optim, "SGD", spy)
    learner = instantiate(manager.learners.get("mlp"), {})
    model = learner.build(view((1, 8, 8)), 0)
    art = Artifact({"x": torch.randn(20, 1, 8, 8), "y": torch.arange(10).repeat(2)})
    learner.fit(model, art, Recipe(epochs=4, lr=0.5), torch.Generator().manual_seed(0))
    assert made == [0.5, pytest.approx(0.05)]


def test_learned_lr_is_read_from_the_artifact(manager):
    from ddbench.ops.steps import learning_rate

    art = Artifact({"lr": torch.tensor(0.03)})
    assert learning_rate(art, Recipe(lr_from_artifact="lr")) == pytest.approx(0.03)
    assert learning_rate(art, Recipe(lr=0.01)) == 0.01


def test_ridge_survives_a_rank_deficient_gram():
    from ddbench_theory.two_layer import ridge_from_moments

    phi = torch.randn(3, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e4  # 3 points, 50 features: Gram of rank 3, huge entries
    gram, rhs = phi.T @ phi / 3, phi.T @ torch.ones(3, dtype=torch.float64) / 3
    a = ridge_from_moments(gram, rhs, 1e-12)
    assert torch.isfinite(a).all() and torch.allclose(phi @ a, torch.ones(3, dtype=torch.float64), atol=1e-4)


