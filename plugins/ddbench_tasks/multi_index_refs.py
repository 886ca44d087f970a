"""Evaluator-side numbers for two-stage artifacts on the multi-index task (specs/theory.md §5, §6).

Reconstruction (see specs/theory.md). These need U or the test split, so the task computes them
(``MultiIndex.artifact_metrics``), on the artifact's device, at the student's own theta0
(fixed-init protocol): the full-data teacher, random features without the first-layer step, the
equal-budget random real subset (5 draws), the fresh-init "oracle head" diagnostic and the
first-layer alignments. Per-theta0 references are computed once per task instance.
"""
from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING

import torch

from ddbench.artifact import count_storage
from ddbench.interfaces import Artifact, Recipe, Split
from ddbench_learners.two_layer import TwoLayer, TwoLayerLearner, first_layer_step, preprocess_labels, ridge_head

if TYPE_CHECKING:
    from ddbench_tasks.multi_index import MultiIndex

RANDOM_DRAWS = 5  # theory.md §6: equal-budget random subset, 5 draws
ORACLE_INITS = 5  # theory.md §5: fresh-init diagnostic over 5 fresh theta0
ORACLE_SEED = 10_000_019  # seeds of the fresh theta0, disjoint from distillation seeds


def _splits(task: "MultiIndex", device: torch.device) -> tuple[Split, Split]:
    """The train and test splits on ``device``, copied once per task instance and device."""
    cache = task.__dict__.setdefault("_device_splits", {})
    if str(device) not in cache:
        data = task.load()
        cache[str(device)] = (data.train.to(device), data.test.to(device))
    return cache[str(device)]


def _recipe(task: "MultiIndex", init_seed: int, **options: object) -> Recipe:
    return task.recipe("full").updated({"options": {"init_seed": init_seed, **options}})


def _test_scores(task: "MultiIndex", learner: TwoLayerLearner, model: TwoLayer, device: torch.device) -> dict[str, float]:
    test = _splits(task, device)[1]
    return task.score(learner.predict(model, test.x, batch_size=16384), test.y)


def _fit_real(task: "MultiIndex", learner: TwoLayerLearner, x: torch.Tensor, y: torch.Tensor, init_seed: int,
              device: torch.device, **options: object) -> TwoLayer:
    model = TwoLayer(task.d, learner.width, init_seed).to(device)
    return learner.fit(model, Artifact({"x": x, "y": y}), _recipe(task, init_seed, **options), torch.Generator(device))


def references(task: "MultiIndex", init_seed: int, width: int, device: torch.device) -> dict[str, float]:
    """Teacher (all n real points) and random-features R^2 at theta0 of ``init_seed``, the teacher's
    first-layer alignment ||W1 U|| / ||W1||, and the store-the-model count L (d + 2) + d + 1."""
    cache = task.__dict__.setdefault("_reference_cache", {})
    key = (init_seed, width, str(device))
    if key not in cache:
        learner = TwoLayerLearner(width)
        train = _splits(task, device)[0]
        teacher = _fit_real(task, learner, train.x, train.y, init_seed, device)
        features = _fit_real(task, learner, train.x, train.y, init_seed, device, first_layer="random")
        scores = _test_scores(task, learner, teacher, device)
        cache[key] = {"teacher_r2": scores["r2"], "teacher_mse": scores["mse"],
                      "teacher_w1_alignment": task.first_layer_alignment(teacher.W),
                      "random_features_r2": _test_scores(task, learner, features, device)["r2"],
                      "store_model_params": float(width * (task.d + 2) + task.d + 1)}
    return dict(cache[key])


def student_metrics(task: "MultiIndex", artifact: Artifact, init_seed: int, width: int, device: torch.device) -> dict[str, float]:
    """First-layer alignment of the student, the oracle-head diagnostic and the equal-budget random subset."""
    learner = TwoLayerLearner(width)
    recipe = _recipe(task, init_seed).updated(artifact.recipe).options
    eta, lam = float(recipe["rho"]) * math.sqrt(task.d), float(recipe["ridge"])
    x1, y1 = artifact.tensors["x1"].float(), artifact.tensors["y1"].float()
    x, y = _splits(task, device)[0].x, _splits(task, device)[0].y
    alpha, beta, y_pre = preprocess_labels(x, y)
    student = first_layer_step(TwoLayer(task.d, width, init_seed).to(device), x1, y1, eta)
    out = {"w1_alignment": task.first_layer_alignment(student)}
    oracle = []
    for k in range(ORACLE_INITS):  # fresh theta0: W-step on S1, head fit on the real data
        fresh = TwoLayer(task.d, width, seed=ORACLE_SEED + init_seed * ORACLE_INITS + k).to(device)
        fresh.W = first_layer_step(fresh, x1, y1, eta)
        fresh.reinit_bias()
        fresh.alpha, fresh.beta = alpha, beta
        fresh.a = ridge_head(fresh, x, y_pre, lam)
        oracle.append(_test_scores(task, learner, fresh, device)["r2"])
    out["oracle_head_r2"] = statistics.fmean(oracle)
    m = count_storage(artifact).scalars // (task.d + 1)
    gen = torch.Generator(device).manual_seed(ORACLE_SEED + init_seed)
    draws = []
    for _ in range(RANDOM_DRAWS):
        idx = torch.randperm(len(x), generator=gen, device=device)[:m]
        draws.append(_test_scores(task, learner, _fit_real(task, learner, x[idx], y[idx], init_seed, device), device)["r2"])
    out["random_equal_r2"] = statistics.fmean(draws)
    out["random_equal_points"] = float(m)
    return out
