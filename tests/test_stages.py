"""Staged artifacts (ddbench.budget.stages): validation, counting, and how every learner's fit trains them."""
from __future__ import annotations

import pytest
import torch

from ddbench.budget.artifact import admission_problems, count_storage, with_labels
from ddbench.budget.stages import stage_tensors
from ddbench.contracts.interfaces import Artifact
from ddbench.contracts.recipe import Recipe
from ddbench.ops.training import train_classifier
from ddbench.plugins import instantiate
from ddbench.testing.tasks import TinyClassification, task_view
from ddbench.vocab import Budget

VIEW = task_view(TinyClassification())  # 3 classes, (1, 8, 8) inputs
RECIPE = Recipe(epochs=3, batch_size=4, augment="dsa", dsa_strategy="crop_flip")


def staged(ends=(6, 12), rates=(0.05, 0.01), rows=12, **recipe) -> Artifact:
    x = torch.randn(rows, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    tensors = {"x": x, **stage_tensors(list(ends), torch.tensor(rates))}
    if recipe.get("labels") != "class-balanced":
        tensors["y"] = torch.arange(3).repeat(rows // 3)
    return Artifact(tensors, recipe)


def weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def fit(learner, artifact: Artifact, recipe: Recipe = RECIPE, seed: int = 0) -> torch.Tensor:
    model = learner.build(VIEW, 0)
    learner.fit(model, artifact, recipe, torch.Generator().manual_seed(seed))
    return weights(model)


def test_a_two_stage_artifact_trains_as_a_hand_written_staged_loop_and_not_as_its_union(manager):
    learner = instantiate(manager.learners.get("convnet"), {"width": 8})
    art = staged()
    got = fit(learner, art)
    # by hand: stage 1 on rows 0..5 at lr 0.05, then rows 0..11 at lr 0.01, one generator throughout
    model, g = learner.build(VIEW, 0), torch.Generator().manual_seed(0)
    x, y = art.tensors["x"], art.tensors["y"]
    for end, lr in ((6, 0.05), (12, 0.01)):
        part = Artifact({"x": x[:end], "y": y[:end], "lr": torch.tensor([lr])})
        train_classifier(model, part, Recipe(**{**RECIPE.as_dict(), "lr_from_artifact": "lr"}), g)
    assert torch.equal(got, weights(model))
    union = Artifact({"x": x, "y": y, "lr": torch.tensor([0.01])})
    flat = fit(learner, union, Recipe(**{**RECIPE.as_dict(), "lr_from_artifact": "lr"}))
    assert not torch.allclose(got, flat, atol=1e-3)


def test_the_vmapped_ensemble_trains_stages_as_sequential_fit(manager):
    learner = instantiate(manager.learners.get("convnet"), {"width": 8})
    art = staged()
    models = [learner.build(VIEW, s) for s in (0, 1)]
    mode = learner.fit_ensemble(models, art, RECIPE, [torch.Generator().manual_seed(s) for s in (0, 1)])
    assert mode == "ensemble"
    for seed, model in zip((0, 1), models):
        alone = learner.build(VIEW, seed)
        learner.fit(alone, art, RECIPE, torch.Generator().manual_seed(seed))
        assert torch.allclose(weights(model), weights(alone), atol=1e-5)


def test_class_balanced_labels_are_derived_per_stage():
    art = with_labels(staged(ends=(3, 9), rows=9, labels="class-balanced"), 3)
    assert art.tensors["y"].tolist() == [0, 1, 2, 0, 0, 1, 1, 2, 2]


def test_stage_tensors_are_counted_and_within_the_budget(manager):
    art = staged(labels="class-balanced")
    learner = manager.learners.get("convnet")
    assert admission_problems(art, VIEW, Budget.parse("ipc=4"), "t", learner) == []
    assert count_storage(art).by_tensor == {"x": 768, "stage.end": 2, "stage.lr": 2}


@pytest.mark.parametrize("ends, rates, recipe, message", [
    ((6, 6), (0.1, 0.1), {}, "strictly increasing"),
    ((6, 11), (0.1, 0.1), {}, "the last equal to the 12 rows"),
    ((6, 12), (0.1, -1.0), {}, "finite positive"),
    ((6, 12), (0.1,), {}, "one float step size per stage"),
    ((4, 12), (0.1, 0.1), {"labels": "class-balanced"}, "not multiples of the 3 classes"),
])
def test_bad_stage_tensors_are_one_line_errors(manager, ends, rates, recipe, message):
    art = staged(ends, rates, **recipe)
    found = admission_problems(art, VIEW, None, "t", manager.learners.get("convnet"))
    assert len(found) == 1 and found[0].rule == "valid" and message in found[0].message
    assert "\n" not in found[0].message


def test_a_stray_stage_tensor_and_a_learner_without_stages_are_refused(manager):
    art = staged()
    art.tensors["stage.extra"] = torch.ones(1)
    assert "not a stage tensor" in admission_problems(art, VIEW, None, "t", manager.learners.get("convnet"))[0].message
    found = admission_problems(staged(), VIEW, None, "t", manager.learners.get("two-layer"))
    assert any("cannot train stage by stage" in p.message for p in found)
