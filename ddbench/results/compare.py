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
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from tabulate import tabulate

from ddbench.errors import SuiteError, close_names
from ddbench.results.records import HARNESS_DIRECTIONS, Row

TIME_FLOOR_S = 0.05
TIME_METRICS = ("distill_s", "eval_s")
DEFAULT_FAIL_ON = ("accuracy:-1.0", "r2:-0.02")
"""The rules ``ddbench compare`` applies without ``--fail-on``, to those of these metrics the results have."""

__all__ = ["DEFAULT_FAIL_ON", "HARNESS_DIRECTIONS", "Rule", "TIME_FLOOR_S", "compare", "default_rules"]


@dataclass(frozen=True)
class Rule:
    metric: str
    delta: float
    relative: bool
    higher_is_better: bool = True

    @classmethod
    def parse(cls, text: str, directions: Mapping[str, bool] = HARNESS_DIRECTIONS) -> "Rule":
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

    def regressed(self, old: float, new: float) -> bool:
        if self.metric in TIME_METRICS and abs(new - old) < TIME_FLOOR_S:
            return False
        change = self.change(old, new)
        return change < self.delta if self.higher_is_better else change > self.delta


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


def compare(old: list[Row], new: list[Row], rules: list[Rule]) -> tuple[str, int]:
    """A table of every compared value and the number of regressions."""
    table, regressions = [], 0
    for o in old:
        if not o.ok:
            continue
        n = _match(o, new)
        if n is None or not n.ok:
            regressions += 1
            table.append([o.task, o.label or o.distiller, o.budget, "(cell)", "ok", "missing" if n is None else "failed", "", "", "REGRESSION"])
            continue
        for rule in rules:
            before, after = o.value(rule.metric), n.value(rule.metric)
            if math.isnan(before) or math.isnan(after):
                continue
            bad = rule.regressed(before, after)
            regressions += bad
            change = rule.change(before, after)
            table.append([o.task, o.label or o.distiller, o.budget, rule.metric, f"{before:.4g}", f"{after:.4g}",
                          f"{change:+.3g}{'%' if rule.relative else ''}", str(rule), "REGRESSION" if bad else "ok"])
    headers = ["task", "distiller", "budget", "metric", "old", "new", "change", "limit", "verdict"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), regressions
