"""Deprecated: the table of a run moved to :mod:`ddbench.results.report`. This alias re-exports it
for plugins and scripts written before."""
from __future__ import annotations

import warnings

from ddbench.results.report import HEADERS, rows, table

__all__ = ["HEADERS", "rows", "table"]

warnings.warn("ddbench.report is deprecated: import ddbench.results.report instead.", DeprecationWarning, stacklevel=2)
