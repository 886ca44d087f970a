"""``ddbench compare OLD NEW --fail-on METRIC:DELTA``: regressions between two sets of results.

OLD and NEW may be results stores (``.sqlite``/``.db``), exported ``results.json`` files or
leaderboard CSVs. A rule ``accuracy:-1.0`` fails when accuracy drops by more than 1.0 (absolute,
in the metric's units: accuracy is in percent); ``distill_s:+20%`` fails when distillation time
grows by more than 20 %. Each metric knows whether higher is better, and the sign of DELTA must
point in its bad direction. Rows are matched by task, distiller, budget and settings (options,
learner, profile, evaluation seeds, time limit, device type; not the results version, since
comparing versions is the point): a configuration present in OLD and absent from NEW is a
regression, and rows differing only in settings are never compared with each other. Timing changes under ``TIME_FLOOR_S`` seconds are noise, never a
regression (a 1 ms step that takes 2 ms is not a slowdown worth failing CI for).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from ddbench.errors import StoreError, SuiteError, close_names
from ddbench.leaderboard import HIGHER_IS_BETTER, Row, aggregate, label_rows, read_results

TIME_FLOOR_S = 0.05
TIME_METRICS = ("distill_s", "eval_s")


@dataclass(frozen=True)
class Rule:
    metric: str
    delta: float
    relative: bool

    @classmethod
    def parse(cls, text: str) -> "Rule":
        metric, sep, delta = text.partition(":")
        if not sep:
            raise SuiteError(f"malformed --fail-on {text!r}: write METRIC:DELTA, e.g. accuracy:-1.0 or distill_s:+20%.")
        if metric not in HIGHER_IS_BETTER:
            raise SuiteError(f"unknown metric {metric!r} in --fail-on.{close_names(metric, HIGHER_IS_BETTER)} Known: {', '.join(sorted(HIGHER_IS_BETTER))}.")
        relative = delta.endswith("%")
        try:
            value = float(delta.rstrip("%"))
        except ValueError as exc:
            raise SuiteError(f"malformed delta {delta!r} in --fail-on {text!r}: write a number such as -1.0 or +20%.") from exc
        if not math.isfinite(value):
            raise SuiteError(f"malformed delta {delta!r} in --fail-on {text!r}: write a finite number such as -1.0 or +20%.")
        higher = HIGHER_IS_BETTER[metric]
        if (higher and value > 0) or (not higher and value < 0):
            bad = "a drop" if higher else "a rise"
            raise SuiteError(f"{metric} is {'higher' if higher else 'lower'}-is-better, so a regression is {bad}: "
                             f"write {metric}:{'-' if higher else '+'}{abs(value):g}{'%' if relative else ''}.")
        return cls(metric, value, relative)

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
        return change < self.delta if HIGHER_IS_BETTER[self.metric] else change > self.delta


CSV_COLUMNS = ("task", "distiller", "budget", "metric", "mean")


def _csv_rows(path: Path) -> list[Row]:
    rows = []
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise StoreError(f"{str(path)!r} is not a leaderboard CSV (no column {', '.join(missing)}): pass one written by `ddbench leaderboard`.")
            for line, d in enumerate(reader, start=2):
                num = lambda k: float(d[k]) if d.get(k) not in (None, "") else math.nan  # noqa: E731
                try:
                    row = Row(d["task"], d["distiller"], d["budget"], d["metric"], [num("mean")] if d.get("mean") else [],
                              stored_params=num("stored_params"), gain_vs_random=num("gain_vs_random"), compression=num("compression"),
                              distill_s=num("distill_s"), eval_s=num("eval_s"), peak_mb=num("peak_mb"), device=d.get("device") or "",
                              config=json.loads(d["settings"]) if d.get("settings") else None, label=d.get("label") or "")
                except (TypeError, ValueError) as exc:
                    raise StoreError(f"{str(path)!r} line {line} is malformed ({exc}): pass a CSV written by `ddbench leaderboard`.") from exc
                if d.get("status", "ok") != "ok":
                    row.failed = [d["status"]]
                rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise StoreError(f"{str(path)!r} is not a readable CSV ({exc}).") from exc
    label_rows([r for r in rows if not r.label])
    return rows


def load_rows(path: str | Path) -> list[Row]:
    """Aggregated rows from a store, an exported JSON or a leaderboard CSV."""
    path = Path(path)
    if path.is_dir():
        raise StoreError(f"results {str(path)!r} is a folder: pass a results store (.sqlite), a results.json or a leaderboard .csv.")
    if not path.is_file():
        raise StoreError(f"results {str(path)!r} not found: pass a results store (.sqlite), a results.json or a leaderboard .csv.")
    if path.suffix == ".csv":
        return _csv_rows(path)
    if path.suffix == ".json":
        return aggregate(read_results(path))
    if path.suffix in (".sqlite", ".db"):
        from ddbench.store import ResultStore

        store = ResultStore(path, create=False)
        try:
            return aggregate(store.records())
        finally:
            store.close()
    raise StoreError(f"cannot read results from {str(path)!r}: use a .sqlite store, a results .json or a leaderboard .csv.")


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
        if not o.values:
            continue
        n = _match(o, new)
        if n is None or not n.values:
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
