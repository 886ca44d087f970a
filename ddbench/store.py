"""Deprecated: the results store moved to :mod:`ddbench.results.store` (records to
:mod:`ddbench.results.records`). This alias re-exports them for plugins and scripts written before."""
from __future__ import annotations

import warnings

from ddbench.results.records import RESULT_FIELDS, Cell, CellResult, check_record, normalised, result_from_dict, result_to_dict
from ddbench.results.store import COLUMNS, DEFAULT_PATH, SCHEMA, SQLITE_MAGIC, ResultStore, default_store_path, read_results

__all__ = ["COLUMNS", "DEFAULT_PATH", "RESULT_FIELDS", "SCHEMA", "SQLITE_MAGIC", "Cell", "CellResult", "ResultStore",
           "check_record", "default_store_path", "normalised", "read_results", "result_from_dict", "result_to_dict"]

warnings.warn("ddbench.store is deprecated: import ddbench.results.store (and ddbench.results.records) instead.",
              DeprecationWarning, stacklevel=2)
