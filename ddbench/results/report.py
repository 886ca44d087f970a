"""The table ``ddbench run`` prints: one line per cell, the columns of docs/design.md §4 (Scoring)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from ddbench.results.leaderboard import cells
from ddbench.results.records import COLUMNS, CellResult, Row, aggregate, result_to_dict
from ddbench.results.records import fmt as text

HEADERS = ["task", "distiller", "budget", "protocol", "metric", "mean ± std", *[c.header.format(metric="metric") for c in COLUMNS], "status"]


def rows(results: Sequence[dict[str, Any] | CellResult]) -> list[list[object]]:
    """Table lines of records (or :class:`CellResult` objects), in the given order."""
    records = [result_to_dict(r) if isinstance(r, CellResult) else r for r in results]
    return [_line(r) for r in aggregate(records, per_cell=True)]


def _line(r: Row) -> list[object]:
    if not r.ok:
        reason = f"failed: {r.failed[0]}" if r.failed else f"skipped: {r.skipped[0]}" if r.skipped else "failed: no result"
        return [r.task, r.distiller, r.budget, r.protocol, r.metric, *[""] * (len(HEADERS) - 6), reason]
    return [r.task, r.distiller, r.budget, r.protocol, r.metric, f"{text(r.mean, '.2f')} ± {text(r.std, '.2f')}", *cells(r), "ok"]


def table(results: Sequence[dict[str, Any] | CellResult], fmt: str = "github") -> str:
    """A text table of results (failed and skipped cells show their one-line reason)."""
    return tabulate(rows(results), headers=HEADERS, tablefmt=fmt, disable_numparse=True)
