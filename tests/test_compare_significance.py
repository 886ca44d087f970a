"""``ddbench compare --significance``: Welch's t-test over evaluation nets, intervals in the table,
and a verdict that fails only a significant regression past the limit; time and memory by medians."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats

from ddbench import Budget
from ddbench.cli import main
from ddbench.results.compare import Change, Rule, compare, sample, welch
from ddbench.results.leaderboard import write
from ddbench.results.records import HARNESS_DIRECTIONS, Cell, CellResult, aggregate, result_to_dict
from ddbench.results.store import read_results

KNOWN = {"accuracy": True, **HARNESS_DIRECTIONS}


def record(values: list[float], seed: int = 0, distiller: str = "dsa", distill_s: float = 10.0, peak_mb: float = 300.0) -> dict:
    cell = Cell("digits", {}, distiller, {}, Budget.parse("ipc=1"), seed, list(range(len(values))), "convnet", {}, "quick")
    result = CellResult(cell, "ok", "accuracy", values, stored_params=650, compression=121.1, distill_s=distill_s, eval_s=1.0,
                        peak_mb=peak_mb, device="cpu", random_ref=60.0, higher_is_better={"accuracy": True})
    return {**result_to_dict(result), "key": cell.key(), "finished_at": "2026-12-03T00:00:00Z",
            "provenance": {"ddbench": "0.1.0", "commit": "abc", "torch": "2", "python": "3.11", "plugins": {}}}


def nets(mean: float, sd: float, n: int) -> list[float]:
    """``n`` values with exactly this mean and sample std."""
    z = [i - (n - 1) / 2 for i in range(n)]
    scale = sd / math.sqrt(sum(x * x for x in z) / (n - 1))
    return [mean + scale * x for x in z]


def save(path: Path, records: list[dict]) -> str:
    path.write_text(json.dumps(records))
    return str(path)


def table_lines(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()[2:] if line.startswith("|")]


def test_a_noisy_two_point_drop_is_not_significant(tmp_path, capsys):
    old = save(tmp_path / "old.json", [record(nets(72.0, 4.0, 3))])
    new = save(tmp_path / "new.json", [record(nets(70.0, 4.0, 3))])
    assert main(["compare", old, new, "--fail-on", "accuracy:-1.0"]) == 1  # the fixed threshold flags it
    capsys.readouterr()
    assert main(["compare", old, new, "--fail-on", "accuracy:-1.0", "--significance", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "| nets " in out and "| 95% interval " in out and "| p " in out
    [line] = table_lines(out)
    assert line[3:7] == ["accuracy", "72", "70", "-2"] and line[7] == "3→3" and line[-2:] == ["-1", "not significant"]
    low, high = (float(x) for x in line[8].strip("[]").split(","))
    half = stats.t.ppf(0.975, 4) * math.sqrt(16 / 3 + 16 / 3)  # Welch's df is 4 for equal variances and counts of 3
    assert (low, high) == pytest.approx((-2 - half, -2 + half), abs=0.05) and low < -1.0 < high  # printed to 3 digits
    assert float(line[9]) > 0.05


def test_a_precise_two_point_drop_fails(tmp_path, capsys):
    old = save(tmp_path / "old.json", [record(nets(72.0, 0.3, 5))])
    new = save(tmp_path / "new.json", [record(nets(70.0, 0.3, 5))])
    assert main(["compare", old, new, "--fail-on", "accuracy:-1.0", "--significance", "0.05"]) == 1
    [line] = table_lines(capsys.readouterr().out)
    assert line[3:8] == ["accuracy", "72", "70", "-2", "5→5"] and line[-1] == "REGRESSION"
    low, high = (float(x) for x in line[8].strip("[]").split(","))
    assert low < -2 < high < -1.0 and float(line[9]) < 0.05


def test_a_significant_change_within_the_limit_passes(tmp_path, capsys):
    old = save(tmp_path / "old.json", [record(nets(72.0, 0.1, 5))])
    new = save(tmp_path / "new.json", [record(nets(71.5, 0.1, 5))])
    assert main(["compare", old, new, "--fail-on", "accuracy:-1.0", "--significance", "0.05"]) == 0
    [line] = table_lines(capsys.readouterr().out)
    assert float(line[9]) < 0.05 and line[-1] == "ok"


def test_welch_matches_scipy_on_the_raw_values():
    a, b = [70.1, 74.0, 71.3, 69.0], [68.2, 66.0, 70.5, 67.1, 69.9, 65.0]
    change = welch(sample_of(a), sample_of(b), 0.05)
    reference = stats.ttest_ind(b, a, equal_var=False)
    interval = reference.confidence_interval(0.95)
    assert change.change == pytest.approx(sum(b) / 6 - sum(a) / 4)
    assert change.p == pytest.approx(reference.pvalue) and (change.low, change.high) == pytest.approx((interval.low, interval.high))


def sample_of(values: list[float]) -> tuple[float, float, int]:
    return aggregate([record(values)])[0].mean, stats.tvar(values), len(values)


def test_nets_pool_over_distillation_seeds_and_csvs_give_the_same_test(tmp_path):
    records = [record([70.0, 71.0, 75.0], seed=0), record([72.0, 73.0, 68.0], seed=1)]
    [row] = aggregate(records)
    assert row.nets == 6 and sample(row) == pytest.approx((71.5, stats.tvar([70, 71, 75, 72, 73, 68]), 6))
    write(records, tmp_path)
    [csv_row] = read_results(tmp_path / "digits.csv").rows()
    assert not csv_row.values
    assert sample(csv_row) == pytest.approx(sample(row), rel=1e-5)


def test_one_net_keeps_the_plain_threshold():
    old, new = aggregate([record([72.0])]), aggregate([record([70.0])])
    text, regressions = compare(old, new, [Rule.parse("accuracy:-1.0", KNOWN)], 0.05)
    assert regressions == 1 and table_lines(text)[0][7:10] == ["", "", ""]


def test_time_and_memory_compare_medians_over_cells(tmp_path, capsys):
    old = [record([70.0, 71.0], seed=s) for s in range(3)]
    one_slow = [record([70.0, 71.0], seed=s, distill_s=30.0 if s == 2 else 10.0, peak_mb=900.0 if s == 2 else 300.0) for s in range(3)]
    rules = ["--fail-on", "distill_s:+20%", "--fail-on", "peak_mb:+20%"]
    old_path, new_path = save(tmp_path / "old.json", old), save(tmp_path / "new.json", one_slow)
    assert main(["compare", old_path, new_path, *rules]) == 1  # means (and the max of peak MB) move past 20 %
    capsys.readouterr()
    assert main(["compare", old_path, new_path, *rules, "--significance", "0.05"]) == 0
    lines = table_lines(capsys.readouterr().out)
    assert [l[3:7] for l in lines] == [["distill_s", "10", "10", "+0%"], ["peak_mb", "300", "300", "+0%"]]
    all_slow = [record([70.0, 71.0], seed=s, distill_s=30.0) for s in range(3)]
    assert main(["compare", old_path, save(tmp_path / "slow.json", all_slow), *rules, "--significance", "0.05"]) == 1


def test_relative_rules_show_the_interval_in_percent():
    old, new = aggregate([record(nets(80.0, 0.3, 5))]), aggregate([record(nets(72.0, 0.3, 5))])
    text, regressions = compare(old, new, [Rule.parse("accuracy:-5%", KNOWN)], 0.05)
    [line] = table_lines(text)
    assert regressions == 1 and line[6] == "-10%" and line[8].endswith("%") and line[-1] == "REGRESSION"


def test_verdicts():
    rule = Rule.parse("accuracy:-1.0", KNOWN)
    assert Change(-2.0).verdict(rule) == "REGRESSION"
    assert Change(-2.0, -3.0, -1.5).verdict(rule) == "REGRESSION"
    assert Change(-2.0, -3.0, -0.5).verdict(rule) == "not significant"
    assert Change(-0.5, -0.8, -0.2).verdict(rule) == "ok"
    slower = Rule.parse("distill_s:+1.0")
    assert Change(+2.0, 0.5, 3.5).verdict(slower) == "not significant" and Change(+2.0, 1.5, 2.5).verdict(slower) == "REGRESSION"


@pytest.mark.parametrize("alpha", ["0", "0.5", "abc", "nan", "-0.1"])
def test_bad_significance_is_one_line(tmp_path, capsys, alpha):
    old = save(tmp_path / "old.json", [record([70.0, 71.0])])
    assert main(["compare", old, old, "--significance", alpha]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--significance {alpha!r} is not a significance level" in err
