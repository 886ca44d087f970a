"""Evaluator-side numbers for two-stage artifacts on the multi-index task (docs/theory.md §5, §6).

Reconstruction (see docs/theory.md). These need U or the test split, so the task computes them
(``MultiIndex.artifact_metrics``), on the artifact's device, at the student's own theta0
(fixed-init protocol): the full-data teacher, random features without the first-layer step, the
equal-budget random real subset (5 draws), the fresh-init "oracle head" diagnostic and the
first-layer alignments. The task hands over what they need as a :class:`Truth` and caches the
per-theta0 references itself.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ddbench.budget.artifact import count_storage
from ddbench.contracts.interfaces import Artifact, Split
from ddbench.contracts.recipe import Recipe
from ddbench_theory.two_layer import (
    TwoLayer,
    TwoLayerLearner,
    feature_moments,
    first_layer_step,
    preprocess_labels,
    ridge_from_moments,
    ridge_head,
)

RANDOM_DRAWS = 5  # docs/theory.md §6: equal-budget random subset, 5 draws
ORACLE_INITS = 5  # docs/theory.md §5: fresh-init diagnostic over 5 fresh theta0
ORACLE_SEED = 10_000_019  # seeds of the fresh theta0, disjoint from distillation seeds


@dataclass(frozen=True)
class Truth:
    """What the references need of the task, on one device: the input dimension, the train,
    validation and test splits, the public recipe, the scorer and the alignment ||W U|| / ||W|| of a first layer."""

    d: int
    train: Split
    val: Split
    test: Split
    recipe: Recipe
    score: Callable[[Tensor, Tensor], dict[str, float]]
    first_layer_alignment: Callable[[Tensor], float]


def _recipe(truth: Truth, init_seed: int, **options: object) -> Recipe:
    return truth.recipe.updated({"options": {"init_seed": init_seed, **options}})


def _test_scores(truth: Truth, learner: TwoLayerLearner, model: TwoLayer) -> dict[str, float]:
    return truth.score(learner.predict(model, truth.test.x, batch_size=16384), truth.test.y)


def _fit_real(truth: Truth, learner: TwoLayerLearner, x: Tensor, y: Tensor, init_seed: int, **options: object) -> TwoLayer:
    device = x.device
    model = TwoLayer(truth.d, learner.width, init_seed).to(device)
    return learner.fit(model, Artifact({"x": x, "y": y}), _recipe(truth, init_seed, **options), torch.Generator(device))


def teacher(truth: Truth, init_seed: int, width: int) -> dict[str, float]:
    """The full-data teacher at theta0 of ``init_seed``: test R^2 and MSE, first-layer alignment ||W1 U|| / ||W1||."""
    learner = TwoLayerLearner(width)
    model = _fit_real(truth, learner, truth.train.x, truth.train.y, init_seed)
    scores = _test_scores(truth, learner, model)
    return {"teacher_r2": scores["r2"], "teacher_mse": scores["mse"],
            "teacher_w1_alignment": truth.first_layer_alignment(model.W)}


def references(truth: Truth, init_seed: int, width: int) -> dict[str, float]:
    """Teacher (all n real points) and random-features R^2 at theta0 of ``init_seed``, the teacher's
    first-layer alignment ||W1 U|| / ||W1||, and the store-the-model count L (d + 2) + d + 1."""
    learner = TwoLayerLearner(width)
    train = truth.train
    features = _fit_real(truth, learner, train.x, train.y, init_seed, first_layer="random")
    return {**teacher(truth, init_seed, width), "random_features_r2": _test_scores(truth, learner, features)["r2"],
            "store_model_params": float(width * (truth.d + 2) + truth.d + 1)}


def tuned_subset(truth: Truth, init_seed: int, width: int, idx: Tensor, ridges: tuple[float, ...]) -> dict[str, float]:
    """The learner on the real points ``idx`` with its ridge lambda chosen from ``ridges`` by validation R^2
    (never test; docs/theory.md §6, the readable random reference): test R^2 and the lambda chosen.

    The learner's data-mode fit (preprocessing, first-layer step, bias re-initialisation, ridge head)
    step by step, with the Gram of the subset computed once and solved for every lambda."""
    learner = TwoLayerLearner(width)
    x, y = truth.train.x[idx], truth.train.y[idx]
    eta = float(truth.recipe.options["rho"]) * math.sqrt(truth.d)
    model = TwoLayer(truth.d, width, init_seed).to(x.device)
    model.alpha, model.beta, y_pre = preprocess_labels(x, y)
    model.W = first_layer_step(model, x, y_pre, eta)
    model.reinit_bias()
    gram, rhs, _ = feature_moments(model.W, model.b, x, y_pre)
    heads = {lam: ridge_from_moments(gram, rhs, lam) for lam in ridges}
    phi_val = model.features(truth.val.x).double()
    base = (model.alpha + truth.val.x @ model.beta).double()
    yv = truth.val.y.double()
    var = float(yv.var(unbiased=False))

    def val_r2(lam: float) -> float:
        return 1 - float(((base + phi_val @ heads[lam] - yv) ** 2).mean()) / var

    lam = max(ridges, key=val_r2)
    model.a = heads[lam].to(model.W.dtype)
    return {"r2": _test_scores(truth, learner, model)["r2"], "ridge": lam}


def student_metrics(truth: Truth, artifact: Artifact, init_seed: int, width: int) -> dict[str, float]:
    """First-layer alignment of the student, the oracle-head diagnostic and the equal-budget random subset."""
    learner = TwoLayerLearner(width)
    recipe = _recipe(truth, init_seed).updated(artifact.recipe).options
    eta, lam = float(recipe["rho"]) * math.sqrt(truth.d), float(recipe["ridge"])
    x1, y1 = artifact.tensors["x1"].float(), artifact.tensors["y1"].float()
    x, y = truth.train.x, truth.train.y
    device = x.device
    alpha, beta, y_pre = preprocess_labels(x, y)
    student = first_layer_step(TwoLayer(truth.d, width, init_seed).to(device), x1, y1, eta)
    out = {"w1_alignment": truth.first_layer_alignment(student)}
    oracle = []
    for k in range(ORACLE_INITS):  # fresh theta0: W-step on S1, head fit on the real data
        fresh = TwoLayer(truth.d, width, seed=ORACLE_SEED + init_seed * ORACLE_INITS + k).to(device)
        fresh.W = first_layer_step(fresh, x1, y1, eta)
        fresh.reinit_bias()
        fresh.alpha, fresh.beta = alpha, beta
        fresh.a = ridge_head(fresh, x, y_pre, lam)
        oracle.append(_test_scores(truth, learner, fresh)["r2"])
    out["oracle_head_r2"] = statistics.fmean(oracle)
    m = count_storage(artifact).scalars // (truth.d + 1)
    gen = torch.Generator(device).manual_seed(ORACLE_SEED + init_seed)
    draws = []
    for _ in range(RANDOM_DRAWS):
        idx = torch.randperm(len(x), generator=gen, device=device)[:m]
        draws.append(_test_scores(truth, learner, _fit_real(truth, learner, x[idx], y[idx], init_seed))["r2"])
    out["random_equal_r2"] = statistics.fmean(draws)
    out["random_equal_points"] = float(m)
    return out
