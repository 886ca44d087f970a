"""``ddbench compare OLD NEW --fail-on METRIC:DELTA``: regressions between two sets of results.

OLD and NEW may be results stores (``.sqlite``/``.db``), exported ``results.json`` files or
leaderboard CSVs (:func:`ddbench.results.store.read_results`). A rule ``accuracy:-1.0`` fails
when accuracy drops by more than 1.0 (absolute, in the metric's units: accuracy is in percent);
``distill_s:+20%`` fails when distillation time grows by more than 20 %. Which way a metric is
better comes from the results themselves: the harness-defined columns (:data:`HARNESS_DIRECTIONS`)
and what each record's task declared (``higher_is_better``); the sign of DELTA must point in the
bad direction. Rows are matched by task, distiller, budget and settings (options, learner,
profile, evaluation seeds, time limit, device type; not the results version, since comparing
versions is the point): a configuration present in OLD and absent from NEW is a regression, and
rows differing only in settings are never compared with each other. Timing changes under
``TIME_FLOOR_S`` seconds are noise, never a regression (a 1 ms step that takes 2 ms is not a
slowdown worth failing CI for).

With a significance level (``--significance ALPHA``, :func:`compare`'s ``significance``), the
headline metric is tested, not just thresholded: Welch's t-test over the evaluation nets of each
row (every net of every distillation seed, pooled) gives the change's (1 − ALPHA) confidence
interval, and a change past the rule's limit is a regression only when the whole interval lies
past the limit too; otherwise it is reported "not significant". Time and memory (``distill_s``,
``eval_s``, ``peak_mb``) compare the medians over cells. Other metrics, and rows with one net (no
spread to estimate), keep the plain threshold.
"""
from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from tabulate import tabulate

from ddbench.errors import SuiteError, close_names
from ddbench.results.records import HARNESS_DIRECTIONS, MEDIAN_COLUMNS, Row

TIME_FLOOR_S = 0.05
TIME_METRICS = ("distill_s", "eval_s")
DEFAULT_FAIL_ON = ("accuracy:-1.0", "r2:-0.02")
"""The rules ``ddbench compare`` applies without ``--fail-on``, to those of these metrics the results have."""

__all__ = [
    "DEFAULT_FAIL_ON",
    "HARNESS_DIRECTIONS",
    "TIME_FLOOR_S",
    "Change",
    "Rule",
    "check_significance",
    "compare",
    "default_rules",
    "welch",
]


@dataclass(frozen=True)
class Rule:
    metric: str
    delta: float
    relative: bool
    higher_is_better: bool = True

    @classmethod
    def parse(cls, text: str, directions: Mapping[str, bool] = HARNESS_DIRECTIONS) -> Rule:
        """``METRIC:DELTA`` for a metric of ``directions`` (metric -> higher is better), e.g. those
        of :func:`ddbench.results.records.directions` over the rows compared."""
        metric, sep, delta = text.partition(":")
        if not sep:
            raise SuiteError(f"malformed --fail-on {text!r}: write METRIC:DELTA, e.g. accuracy:-1.0 or distill_s:+20%.")
        if metric not in directions:
            raise SuiteError(f"unknown metric {metric!r} in --fail-on.{close_names(metric, directions)} "
                             f"Known (a direction recorded in the results): {', '.join(sorted(directions))}.")
        relative = delta.endswith("%")
        try:
            value = float(delta.rstrip("%"))
        except ValueError as exc:
            raise SuiteError(f"malformed delta {delta!r} in --fail-on {text!r}: write a number such as -1.0 or +20%.") from exc
        if not math.isfinite(value):
            raise SuiteError(f"malformed delta {delta!r} in --fail-on {text!r}: write a finite number such as -1.0 or +20%.")
        higher = directions[metric]
        if (higher and value > 0) or (not higher and value < 0):
            bad = "a drop" if higher else "a rise"
            raise SuiteError(f"{metric} is {'higher' if higher else 'lower'}-is-better, so a regression is {bad}: "
                             f"write {metric}:{'-' if higher else '+'}{abs(value):g}{'%' if relative else ''}.")
        return cls(metric, value, relative, higher)

    def __str__(self) -> str:
        return f"{self.delta:+g}{'%' if self.relative else ''}"

    def change(self, old: float, new: float) -> float:
        if self.relative:
            return (new - old) / abs(old) * 100 if old else math.inf * (1 if new > old else -1 if new < old else 0)
        return new - old

    def past(self, change: float) -> bool:
        """Whether ``change`` (in the rule's units) goes beyond the limit in the bad direction."""
        return change < self.delta if self.higher_is_better else change > self.delta


@dataclass(frozen=True)
class Change:
    """New minus old of one metric (in the rule's units), with its confidence interval and Welch's
    two-sided p-value where the rows have samples (``None`` otherwise)."""

    change: float
    low: float | None = None
    high: float | None = None
    p: float | None = None

    def verdict(self, rule: Rule) -> str:
        """``REGRESSION`` when the change and its whole interval lie past the limit; ``not significant``
        when the change is past it but the interval reaches back; ``ok`` otherwise."""
        if not rule.past(self.change):
            return "ok"
        if self.low is None or self.high is None:
            return "REGRESSION"
        return "REGRESSION" if rule.past(self.high if rule.higher_is_better else self.low) else "not significant"

    def relative_to(self, before: float) -> Change:
        """The change and its interval in percent of ``before``."""
        scale = 100 / abs(before) if before else math.nan
        low, high = (None, None) if self.low is None or self.high is None else (self.low * scale, self.high * scale)
        return Change(self.change * scale, low, high, self.p)


def check_significance(text: str) -> float:
    """``text`` as a significance level (0 < ALPHA < 0.5), else a one-line :class:`SuiteError`."""
    try:
        alpha = float(text)
    except ValueError:
        alpha = math.nan
    if not 0 < alpha < 0.5:
        raise SuiteError(f"--significance {text!r} is not a significance level: pass a number between 0 and 0.5, e.g. 0.05.")
    return alpha


def sample(row: Row) -> tuple[float, float, int]:
    """The mean, unbiased variance and count of the row's per-net values; from a CSV (no values), from
    its mean, population std and net count."""
    if row.values:
        return statistics.fmean(row.values), statistics.variance(row.values) if len(row.values) > 1 else math.nan, len(row.values)
    n = row.nets
    return row.mean, row.std ** 2 * n / (n - 1) if n > 1 else math.nan, n


def welch(old: tuple[float, float, int], new: tuple[float, float, int], alpha: float) -> Change:
    """Welch's t-test of new − old from ``(mean, unbiased variance, n)`` samples: the difference, its
    (1 − alpha) interval (Welch–Satterthwaite degrees of freedom) and the two-sided p-value of no change."""
    from scipy import stats

    (m1, v1, n1), (m2, v2, n2) = old, new
    diff = m2 - m1
    a, b = v1 / n1, v2 / n2
    se = math.sqrt(a + b)
    if se == 0:  # no spread on either side: the difference is exact
        return Change(diff, diff, diff, 1.0 if diff == 0 else 0.0)
    df = (a + b) ** 2 / (a ** 2 / (n1 - 1) + b ** 2 / (n2 - 1))
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    return Change(diff, diff - half, diff + half, float(2 * stats.t.sf(abs(diff) / se, df)))


def tested(rule: Rule, old: Row, new: Row, alpha: float) -> tuple[float, float, Change]:
    """Old and new values of ``rule``'s metric and their change under ``--significance alpha``."""
    if rule.metric in MEDIAN_COLUMNS:
        before, after = old.median(rule.metric), new.median(rule.metric)
        return before, after, Change(rule.change(before, after))
    before, after = old.value(rule.metric), new.value(rule.metric)
    s_old, s_new = sample(old), sample(new)
    if rule.metric not in (old.metric, "metric", "mean") or math.isnan(s_old[1]) or math.isnan(s_new[1]):
        return before, after, Change(rule.change(before, after))
    change = welch(s_old, s_new, alpha)
    if not rule.relative:
        return before, after, change
    return before, after, change.relative_to(before)


def default_rules(directions: Mapping[str, bool]) -> list[Rule]:
    """:data:`DEFAULT_FAIL_ON`, for the metrics that ``directions`` knows."""
    return [Rule.parse(text, directions) for text in DEFAULT_FAIL_ON if text.partition(":")[0] in directions]


def _matching_key(row: Row) -> tuple[str, str, str, str | None]:
    config = None if row.config is None else {k: v for k, v in row.config.items() if k != "results_version"}
    return row.task, row.distiller, row.budget, None if config is None else json.dumps(config, sort_keys=True, default=str)


def _match(old: Row, new: list[Row]) -> Row | None:
    """The row of ``new`` with ``old``'s configuration; where either side's settings are unknown (a
    CSV from before they were recorded), the one row of the same task, distiller and budget."""
    key = _matching_key(old)
    exact = [n for n in new if _matching_key(n) == key]
    if exact:
        return exact[0]
    loose = [n for n in new if _matching_key(n)[:3] == key[:3] and (key[3] is None or n.config is None)]
    return loose[0] if len(loose) == 1 else None


def compare(old: list[Row], new: list[Row], rules: list[Rule], significance: float | None = None) -> tuple[str, int]:
    """A table of every compared value and the number of regressions; with ``significance``, each
    change of the headline metric with its interval and p-value (:func:`tested`), and a verdict that
    fails only a significant regression past the limit."""
    table, regressions = [], 0
    for o in old:
        if not o.ok:
            continue
        n = _match(o, new)
        if n is None or not n.ok:
            regressions += 1
            gap = ["", "", ""] if significance else []
            table.append([o.task, o.label or o.distiller, o.budget, "(cell)", "ok", "missing" if n is None else "failed", "", *gap, "",
                          "REGRESSION"])
            continue
        for rule in rules:
            if significance is None:
                before, after = o.value(rule.metric), n.value(rule.metric)
                change = Change(rule.change(before, after))
            else:
                before, after, change = tested(rule, o, n, significance)
            if math.isnan(before) or math.isnan(after):
                continue
            floor = rule.metric in TIME_METRICS and abs(after - before) < TIME_FLOOR_S
            verdict = "ok" if floor else change.verdict(rule)
            regressions += verdict == "REGRESSION"
            unit = "%" if rule.relative else ""
            line = [o.task, o.label or o.distiller, o.budget, rule.metric, f"{before:.4g}", f"{after:.4g}", f"{change.change:+.3g}{unit}"]
            if significance is not None:
                interval = "" if change.low is None else f"[{change.low:+.3g}, {change.high:+.3g}]{unit}"
                line += [f"{o.nets}→{n.nets}" if interval else "", interval, "" if change.p is None else f"{change.p:.2g}"]
            table.append([*line, str(rule), verdict])
    stats = [] if significance is None else ["nets", f"{(1 - significance) * 100:g}% interval", "p"]
    headers = ["task", "distiller", "budget", "metric", "old", "new", "change", *stats, "limit", "verdict"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), regressions
