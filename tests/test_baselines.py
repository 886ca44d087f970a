"""Baselines on digits: real subsets score well above chance and below the full train split."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddbench import Budget, RunContext
from ddbench.contracts.deviations import applicable, doc_block
from ddbench.plugins import instantiate
from ddbench.run.suite import DistillerEntry, Suite, TaskEntry
from ddbench_baselines.coresets import Full, Herding, Random, herding_select


def test_herding_picks_the_mean_matching_order():
    feats = torch.tensor([[0.0, 0.0], [2.0, 0.0], [-2.0, 0.0], [10.0, 10.0]])
    # the mean is (2.5, 2.5); (2, 0) is the single point closest to it, so it is picked first
    order = herding_select(feats, 4).tolist()
    assert sorted(order) == [0, 1, 2, 3] and order[0] == 1
    assert herding_select(feats, 2).tolist() == order[:2]


def test_the_documented_deviations_are_the_declared_ones():
    methods = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    for cls in (Random, Herding, Full):
        assert doc_block(cls.name, cls.official_code, cls.deviations) in methods, cls.name
    assert [d["aspect"] for d in applicable(Full, {}, "full")] == ["data"]
    assert [d["aspect"] for d in applicable(Full, {}, "quick")] == ["data", "epochs"]
    picked = applicable(Herding, {"features": "random", "labels": "teacher"}, "quick")
    assert [d["aspect"] for d in picked] == ["feature network", "feature network's training", "labels"]
    assert picked[1]["ours"].startswith("none")  # features=random, not the trained network's recipe
    assert applicable(Random, {}, "quick") == []


def test_random_is_class_balanced_and_seeded(manager, digits):
    _, view, _ = digits
    random = instantiate(manager.distillers.get("random"), {})
    learner = instantiate(manager.learners.get("convnet"), {}, "quick")

    def run(seed):
        ctx = RunContext(torch.device("cpu"), seed, torch.Generator().manual_seed(seed))
        return random.distill(view, Budget.parse("ipc=3"), learner, ctx)

    a, b, c = run(0), run(0), run(1)
    assert torch.bincount(a.y).tolist() == [3] * 10
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)


@pytest.mark.slow
def test_real_subsets_between_chance_and_full(harness):
    suite = Suite("baselines", [TaskEntry("digits", [Budget.parse("ipc=10")])],
                  [DistillerEntry("random"), DistillerEntry("herding"), DistillerEntry("full")], "quick", 3, [0])
    results = {r.cell.distiller: r for r in harness.run(suite)}
    assert all(r.status == "ok" for r in results.values()), {k: r.error for k, r in results.items()}
    full = results["full"].mean
    assert full > 90.0
    for name in ("random", "herding"):
        r = results[name]
        assert r.mean > 10.0 + 40.0, f"{name} at ipc=10 should be far above chance (10 %): {r.values}"
        assert r.mean < full + 1.0, f"{name} at ipc=10 should not beat the full split ({full:.3f}): {r.values}"
        assert r.stored_params == 100 * 65


@pytest.mark.parametrize("name", ["random", "herding", "full"])
def test_baselines_pass_the_conformance_kit(manager, tmp_path, name):
    from ddbench.testing import check_distiller

    report = check_distiller(manager.distillers.get(name), cache_dir=tmp_path)
    assert report.passed and report.cases
