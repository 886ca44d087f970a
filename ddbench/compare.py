"""Deprecated: ``ddbench compare`` moved to :mod:`ddbench.results.compare`. This alias re-exports it
for plugins and scripts written before."""
from __future__ import annotations

import warnings
from pathlib import Path

from ddbench.results.compare import TIME_FLOOR_S, TIME_METRICS, Rule, compare
from ddbench.results.records import Row
from ddbench.results.store import CSV_COLUMNS, read_results

__all__ = ["CSV_COLUMNS", "TIME_FLOOR_S", "TIME_METRICS", "Row", "Rule", "compare", "load_rows"]


def load_rows(path: str | Path) -> list[Row]:
    """Aggregated rows from a store, an exported JSON or a leaderboard CSV (now
    ``ddbench.results.store.read_results(path).rows()``)."""
    return read_results(path).rows()


warnings.warn("ddbench.compare is deprecated: import ddbench.results.compare instead.", DeprecationWarning, stacklevel=2)
