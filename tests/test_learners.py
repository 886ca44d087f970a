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


@pytest.mark.parametrize("learner", ["convnet", "mlp"])
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
    from ddbench.ops.training import learning_rate

    art = Artifact({"lr": torch.tensor(0.03)})
    assert learning_rate(art, Recipe(lr_from_artifact="lr")) == pytest.approx(0.03)
    assert learning_rate(art, Recipe(lr=0.01)) == 0.01


def test_ridge_survives_a_rank_deficient_gram():
    from ddbench_theory.two_layer import ridge_from_moments

    phi = torch.randn(3, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e4  # 3 points, 50 features: Gram of rank 3, huge entries
    gram, rhs = phi.T @ phi / 3, phi.T @ torch.ones(3, dtype=torch.float64) / 3
    a = ridge_from_moments(gram, rhs, 1e-12)
    assert torch.isfinite(a).all() and torch.allclose(phi @ a, torch.ones(3, dtype=torch.float64), atol=1e-4)


@pytest.mark.parametrize("name", ["training", "ensemble"])
def test_the_old_learner_modules_warn_and_still_work(monkeypatch, name):
    import importlib
    import sys

    monkeypatch.delitem(sys.modules, f"ddbench_learners.{name}", raising=False)
    with pytest.warns(DeprecationWarning, match=f"ddbench_learners.{name} is deprecated: import ddbench.ops.{name}"):
        old = importlib.import_module(f"ddbench_learners.{name}")
    new = importlib.import_module(f"ddbench.ops.{name}")
    public = [n for n in vars(new) if not n.startswith("_") and getattr(new.__dict__[n], "__module__", None) == new.__name__]
    assert public and all(getattr(old, n) is getattr(new, n) for n in public)
