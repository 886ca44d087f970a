"""The multi-index memory study (docs/theory.md §7): the search, its cache, the fits and the board."""
from __future__ import annotations

import json
import math

import pytest
import torch

import ddbench_theory.board as board
import ddbench_theory.fits as fits
from ddbench_theory.fits import Key
from ddbench_theory.references import tuned_subset
from ddbench_theory.search import bisect, grid_m2, m1_values, search, violations
from ddbench_theory.study import TIERS, Config, Evaluator, run_config, run_study
from ddbench_theory.task import RIDGE_GRID, MultiIndex

TINY = TIERS["tiny"]


class Synthetic:
    """An evaluator whose student reaches R^2 = 1 - 1 / (m1 m2) (monotone), random R^2 = m / (m + 100)."""

    def __init__(self, d: int):
        self.d, self.calls = d, []

    def student(self, m1: int, m2: int) -> tuple[float, int]:
        self.calls.append((m1, m2))
        return 1 - 1 / (m1 * m2), size(self.d)(m1, m2)

    def random(self, m: int) -> float:
        return m / (m + 100)


def size(d: int):
    return lambda m1, m2: m1 * (d + 1) + 2 * d + 2 * m2 + 1


def test_m1_values_and_grid_follow_the_spec():
    assert m1_values(1) == [1, 2, 4] and m1_values(2) == [2, 4, 8, 16] and m1_values(3) == [3, 6, 9, 18, 36]
    assert grid_m2(64) == [16, 32, 64]


def test_bisect_finds_the_smallest_passing_integer():
    lo, hi = bisect(lambda m: m >= 37, 0, 100, lambda lo, hi: False)
    assert (lo, hi) == (36, 37)
    lo, hi = bisect(lambda m: m >= 37, 0, 100, lambda lo, hi: hi - lo <= 10)  # stops at the resolution
    assert hi >= 37 and hi - lo <= 10 and lo < 37


def test_violations_are_pairs_where_a_larger_m2_fails():
    assert violations({8: 0.9, 16: 0.7, 32: 0.95}, 0.8) == [(8, 16)]
    assert violations({8: 0.7, 16: 0.9, 32: 0.95}, 0.8) == []


def test_search_returns_the_smallest_budget_over_m1_and_the_grid_answer():
    ev = Synthetic(d=10)
    out = search(ev, r=2, d=10, width=64, n=20000, teacher_r2=1.0, eps=0.01, size=size(10))
    # R^2 >= 0.99 needs m1 m2 >= 100: the cheapest is M1 = 2 (11 scalars each) with M2 = 50, or M1 = 4 with M2 = 25, ...
    best = min((size(10)(m1, -(-100 // m1)), m1) for m1 in m1_values(2) if -(-100 // m1) <= 64)
    assert out.budget is not None and out.budget <= best[0] * 1.01 and out.r2 >= 0.99
    assert out.grid_budget >= out.budget and out.violations == []
    assert 9900 * 11 <= out.random_budget <= 9900 * 11 * 1.06  # m / (m + 100) >= 0.99 from m = 9900, to 5 %
    assert 16 in out.skipped_m1  # M1 = 16 cannot beat the best found: not searched


def test_search_reports_not_reached():
    out = search(Synthetic(d=10), r=1, d=10, width=4, n=50, teacher_r2=1.0, eps=0.001, size=size(10))
    assert out.budget is None and out.grid_budget is None and out.random_budget is None  # random at n=50: 0.33


def test_ridge_of_the_random_reference_is_chosen_without_the_test_split():
    task = MultiIndex(d=8, r=2, n_cap=2000, n_test=1000, calib_width=32)
    truth = task.truth(torch.device("cpu"))
    idx = torch.arange(200)
    chosen = tuned_subset(truth, 0, 32, idx, RIDGE_GRID)
    garbled = type(truth)(truth.d, truth.train, truth.val, type(truth.test)(truth.test.x, -truth.test.y), truth.recipe,
                          truth.score, truth.first_layer_alignment)
    assert tuned_subset(garbled, 0, 32, idx, RIDGE_GRID)["ridge"] == chosen["ridge"]
    assert chosen["ridge"] in RIDGE_GRID


TINY_CONFIGS = [Config("he2", 8, r, 32, s) for r in (1, 2) for s in (0, 1)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny tier's study of four configurations and seeds, and its cache folder."""
    cache = tmp_path_factory.mktemp("study")
    return run_study(TINY, cache, "cpu", 1, only=TINY_CONFIGS, log=lambda line: None), cache


@pytest.mark.slow
def test_a_cell_counts_what_the_harness_counts_and_reruns_from_its_cache(tiny):
    results, cache = tiny
    first = results[-1]
    assert first["fresh"] == first["evaluations"] > 10  # the cell asserts its size formula against count_storage
    (folder,) = cache.iterdir()  # one folder per tier settings
    again = run_config(TINY_CONFIGS[-1], TINY, folder, "cpu", 1)
    assert again["fresh"] == 0 and again["b_star"] == first["b_star"]
    lines = (folder / f"{TINY_CONFIGS[-1].name}.jsonl").read_text().splitlines()
    assert len(lines) == first["evaluations"] and json.loads(lines[0])["key"] == "teacher"


@pytest.mark.slow
def test_the_student_at_m2_equal_L_keeps_the_ridge_head(tmp_path):
    """The failure cell of the earlier board (docs/theory.md §4.2): at M2 = L stage 2 could fit the unregularised
    least-squares head; fitted to the ridge objective it does no worse than at M2 = L/2."""
    cell = Evaluator(Config("he2", 32, 2, 256, 0), TIERS["cpu"], tmp_path, torch.device("cpu"))
    half, _ = cell.student(4, 128)
    full, _ = cell.student(4, 256)
    assert full >= half - 0.01 and full > 0.9  # unregularised (before the fix): 0.876 at M2 = L against 0.945 at L/2


def test_fits_recover_known_laws():
    two = {Key("he2", d, r, w): 3.0 * r * r * d + 2.0 * w for d in (16, 32, 64, 128) for r in (1, 2, 3) for w in (64, 256)}
    fit = fits.two_term(two)
    assert fit["c1"] == pytest.approx(3.0) and fit["c2"] == pytest.approx(2.0) and fit["r2"] == pytest.approx(1.0)
    power = fits.power_law({k: 5.0 * k.d * k.r**2 for k in two})
    assert power["s_d"] == pytest.approx(1.0) and power["s_r"] == pytest.approx(2.0) and power["s_L"] == pytest.approx(0.0, abs=1e-9)
    assert fits.slopes({k: 5.0 * k.d * k.r**2 for k in two}, "d")[("he2", 2, 64)] == pytest.approx(1.0)
    keys = [k for k in two if k.r == 1 and k.width == 256]
    assert 0 < fits.implied_slope(keys, "d", 3.0, 2.0) < 1  # the L term flattens the d-slope


def test_bootstrap_intervals_cover_the_truth_and_medians_need_half_the_seeds():
    gen = torch.Generator().manual_seed(0)
    groups = {Key("he2", d, r, 64): [float(2 * d * r * r * math.exp(0.05 * torch.randn(1, generator=gen).item())) for _ in range(5)]
              for d in (16, 32, 64) for r in (1, 2, 3)}
    boot = fits.bootstrap(groups, lambda p: fits.power_law(p) or {})
    lo, hi = fits.interval(boot, "s_d")
    assert lo < 1.0 < hi and hi - lo < 0.2
    assert fits.median([10, None, None]) is None and fits.median([10, 12, None]) == 11


@pytest.mark.slow
def test_board_is_written_and_rewritten_from_its_json(tiny, tmp_path):
    from ddbench.cli import main

    results, _ = tiny
    paths = board.write(results, tmp_path / "lb", elapsed=1.0)
    assert sorted(p.name for p in paths) == sorted(f"multi-index.{x}" for x in ("md", "csv", "png", "json"))
    md = (tmp_path / "lb" / "multi-index.md").read_text()
    for section in ("## B* per configuration", "## Fits at eps = 0.05", "## Is R^2 monotone in M2?", "## Closing note",
                    "## The failure cell of the earlier board"):
        assert section in md
    assert main(["theory-study", "--board-only", "--out", str(tmp_path / "lb")]) == 0
    assert (tmp_path / "lb" / "multi-index.md").read_text() == md
    records = [{"config": {"task": "digits"}}]  # the report's input is the study's JSON in OUT, not the suite records
    assert board.REPORT.write(records, tmp_path / "lb") == paths and (tmp_path / "lb" / "multi-index.md").read_text() == md
    assert board.REPORT.write(records, tmp_path / "elsewhere") == [] and not (tmp_path / "elsewhere").exists()
    assert "not reached within n(d+1)" in board.markdown({"results": [dict(results[0], b_star={
        e: dict(b, random_budget=None) for e, b in results[0]["b_star"].items()})]})


def test_bad_tier_is_one_line(capsys):
    from ddbench.cli import main

    assert main(["theory-study", "--tier", "huge"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown --tier 'huge'" in err[0] and "cpu, gpu, tiny" in err[0]


def _tf32(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to TF32's 10-bit mantissa, as TF32 matrix units read their fp32 inputs."""
    mantissa, exponent = torch.frexp(t)
    return torch.ldexp(torch.round(mantissa * 2**11) / 2**11, exponent)


@pytest.mark.slow
def test_the_student_head_on_s2_is_fp64_where_lower_precision_breaks_it():
    """The regime of the earlier GPU failure (docs/theory.md §4.2): M2 = L with lambda = 1e-6 makes the S2
    system ill-conditioned (condition number ~1e8 here, ~1e10 in the failed cell), and the head amplifies the
    precision of the S2 features: rounded as TF32 rounds its inputs, the student collapses. The learner computes
    them in fp64, so its student matches the fp64 head, which its fp32 features did not (0.589 against 0.596)."""
    from ddbench.contracts.interfaces import RunContext
    from ddbench.run.suite import task_view
    from ddbench_theory.distiller import TwoStage
    from ddbench_theory.two_layer import TwoLayerLearner, feature_moments, ridge_from_moments

    task = MultiIndex(d=32, r=2, n_cap=20000, n_test=20000, calib_width=256, ridge=1e-6)
    data = task.load()
    view, learner = task_view(task, data, "cpu"), TwoLayerLearner(256)
    artifact = TwoStage(steps1=300, steps2=0).distill(view, None, learner, RunContext(torch.device("cpu"), 0, torch.Generator()))
    model = learner.fit(learner.build(view, 0), artifact, task.recipe("full").updated(artifact.recipe), torch.Generator())

    def r2() -> float:
        return task.score(learner.predict(model, data.test.x, batch_size=16384), data.test.y)["r2"]

    student = r2()
    t2, v, y2 = artifact.tensors["t2"], artifact.tensors["v"], artifact.tensors["y2"].double()

    def head(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        gram, rhs, _ = feature_moments(w, model.b.to(w.dtype), x, y2)
        return ridge_from_moments(gram, rhs, 1e-6).float()

    model.a = head(t2.double()[:, None] * v.double()[None, :], model.W.double())
    assert abs(student - r2()) < 1e-6
    model.a = head(_tf32(t2[:, None] * v[None, :]), _tf32(model.W))
    assert r2() < student - 0.5
