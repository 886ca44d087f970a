"""Deprecated: leaderboards moved to :mod:`ddbench.results.leaderboard` (rows and their aggregation
to :mod:`ddbench.results.records`). This alias re-exports them for plugins and scripts written before."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ddbench.results.leaderboard import CSV_FIELDS, markdown, pareto, plot, to_csv, write
from ddbench.results.records import IDENTITY, Row, aggregate, common_settings, label_rows, settings
from ddbench.results.store import read_results as _read

__all__ = ["CSV_FIELDS", "IDENTITY", "Row", "aggregate", "common_settings", "label_rows", "markdown", "pareto", "plot",
           "read_results", "settings", "to_csv", "write"]


def read_results(path: Path) -> list[dict[str, Any]]:
    """The records of an exported ``results.json`` (now :func:`ddbench.results.store.read_results`)."""
    return _read(path, "json").records


warnings.warn("ddbench.leaderboard is deprecated: import ddbench.results.leaderboard (and ddbench.results.records) instead.",
              DeprecationWarning, stacklevel=2)
