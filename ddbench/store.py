"""The embedded SQLite results store: every finished cell is committed at once.

One row per cell key (the hash of everything that defines the cell). Writes are single
transactions in WAL mode with a busy timeout, so a run killed at any point loses no finished
cell, never leaves a half-written row, and concurrent writers wait for each other instead of
corrupting the file. Default path: ``.ddbench/results.sqlite`` (``--store PATH`` or
``$DDBENCH_STORE``).
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ddbench.harness import Cell, CellResult
from ddbench.interfaces import Budget
from ddbench.provenance import provenance

DEFAULT_PATH = ".ddbench/results.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    suite TEXT, task TEXT, distiller TEXT, budget TEXT, seed INTEGER,
    status TEXT NOT NULL,
    result TEXT NOT NULL,        -- JSON: the CellResult fields
    config TEXT NOT NULL,        -- JSON: the Cell (task, distiller, options, budget, seeds, profile)
    provenance TEXT NOT NULL,    -- JSON: versions, plugin versions, git commit, host
    finished_at TEXT NOT NULL
)
"""

RESULT_FIELDS = ("status", "metric", "values", "extra", "stored_params", "stored_bytes", "by_tensor", "by_dtype",
                 "compression", "distill_s", "eval_s", "eval_mode", "peak_mb", "device", "error", "traceback", "random_ref")


def default_store_path() -> Path:
    return Path(os.environ.get("DDBENCH_STORE", DEFAULT_PATH))


def result_to_dict(result: CellResult) -> dict[str, Any]:
    return {"config": result.cell.config(), **{f: getattr(result, f) for f in RESULT_FIELDS}}


def result_from_dict(data: dict[str, Any]) -> CellResult:
    config = dict(data["config"])
    config["budget"] = Budget.parse(config["budget"]) if config.get("budget") else None
    return CellResult(Cell(**config), **{f: data[f] for f in RESULT_FIELDS if f in data})


class ResultStore:
    """Results of cells keyed by :meth:`Cell.key`."""

    def __init__(self, path: str | Path | None = None, manager: Any = None):
        self.path = Path(path) if path is not None else default_store_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(SCHEMA)
        self._provenance = provenance(manager)

    def close(self) -> None:
        self.db.close()

    def put(self, result: CellResult, suite: str = "") -> None:
        """Commit one finished cell (replacing an earlier result of the same cell)."""
        c = result.cell
        row = (c.key(), suite, c.task, c.distiller, str(c.budget) if c.budget else "", c.seed, result.status,
               json.dumps(result_to_dict(result)), json.dumps(c.config(), sort_keys=True, default=str),
               json.dumps({**self._provenance, "device": result.device}), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        with self.db:  # BEGIN ... COMMIT: atomic even under SIGKILL
            self.db.execute("INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def done(self, cell: Cell) -> bool:
        """True when the cell finished (ok, or skipped as not applicable); failed cells rerun."""
        row = self.db.execute("SELECT status FROM cells WHERE key = ?", (cell.key(),)).fetchone()
        return row is not None and row[0] in ("ok", "skipped")

    def records(self, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Stored rows as dictionaries (result, provenance, finished_at), oldest first."""
        rows = self.db.execute("SELECT key, result, provenance, finished_at FROM cells ORDER BY finished_at, key").fetchall()
        wanted = None if keys is None else set(keys)
        return [{**json.loads(r), "key": k, "provenance": json.loads(p), "finished_at": t}
                for k, r, p, t in rows if wanted is None or k in wanted]
