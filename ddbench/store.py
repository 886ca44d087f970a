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

from ddbench.errors import BudgetError, StoreError
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

COLUMNS = ("key", "suite", "task", "distiller", "budget", "seed", "status", "result", "config", "provenance", "finished_at")
SQLITE_MAGIC = b"SQLite format 3\x00"
RESULT_FIELDS = ("status", "metric", "values", "extra", "stored_params", "stored_bytes", "by_tensor", "by_dtype",
                 "compression", "distill_s", "eval_s", "eval_mode", "peak_mb", "device", "error", "traceback", "random_ref",
                 "recipe")


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(len(SQLITE_MAGIC))


def default_store_path() -> Path:
    return Path(os.environ.get("DDBENCH_STORE", DEFAULT_PATH))


def result_to_dict(result: CellResult) -> dict[str, Any]:
    return {"config": result.cell.config(), **{f: getattr(result, f) for f in RESULT_FIELDS}}


def normalised(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record with the cell settings that older versions did not record filled in: no
    time limit, the device type of the device it ran on, results version 0."""
    config = record["config"]
    device = str(record.get("device", "cpu"))
    defaults = {"time_limit_s": None, "device_type": "cpu" if device in ("cpu", "") else "cuda", "results_version": 0}
    return {**record, "config": {**defaults, **config}}


def result_from_dict(data: dict[str, Any]) -> CellResult:
    config = dict(normalised(data)["config"])
    config["budget"] = Budget.parse(config["budget"]) if config.get("budget") else None
    return CellResult(Cell(**config), **{f: data[f] for f in RESULT_FIELDS if f in data})


def check_record(record: Any, where: str) -> dict[str, Any]:
    """``record`` if it has the shape of a stored result, else a one-line :class:`StoreError`."""
    problem = ""
    if not isinstance(record, dict):
        problem = f"is a {type(record).__name__}, not a result record"
    elif not isinstance(record.get("config"), dict):
        problem = "has no 'config' table"
    else:
        missing = [k for k in ("task", "distiller", "budget", "seed") if k not in record["config"]]
        missing += [k for k in ("status", "values", "metric") if k not in record]
        if missing:
            problem = f"lacks {', '.join(missing)}"
        else:
            try:
                result_from_dict(record)
            except (TypeError, ValueError, KeyError, BudgetError) as exc:
                problem = f"does not describe a cell ({type(exc).__name__}: {exc})"
    if problem:
        raise StoreError(f"{where} {problem}: it is not a ddbench result record (regenerate it with ddbench).")
    return normalised(record)


class ResultStore:
    """Results of cells keyed by :meth:`Cell.key`.

    ``create=False`` opens an existing store only (``leaderboard`` and ``compare`` never create
    one). A path that is a folder, a file that is not SQLite, a corrupt file or another program's
    SQLite database is a one-line :class:`~ddbench.errors.StoreError`, and the file is left as it was.
    """

    def __init__(self, path: str | Path | None = None, manager: Any = None, create: bool = True):
        self.path = Path(path) if path is not None else default_store_path()
        name = str(self.path)
        if self.path.is_dir():
            raise StoreError(f"results store {name!r} is a folder: pass a file path such as {name.rstrip('/')}/results.sqlite.")
        if not self.path.exists():
            if not create:
                raise StoreError(f"results store {name!r} not found: run `ddbench run --store {name}` first, or pass another store.")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create results store {name!r} ({exc.strerror}): pass a path in a writable folder.") from exc
        elif self.path.stat().st_size and _head(self.path) != SQLITE_MAGIC:
            raise StoreError(f"{name!r} is not a results store (not an SQLite file): pass a .sqlite file written by `ddbench run`.")
        try:
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._check_schema(name, create)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"results store {name!r} cannot be read ({exc}): it is corrupt or not a ddbench store.") from exc
        self._provenance = provenance(manager)

    def _check_schema(self, name: str, create: bool) -> None:
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "cells" in tables:
            columns = tuple(row[1] for row in self.db.execute("PRAGMA table_info(cells)"))
            if columns != COLUMNS:
                raise StoreError(f"{name!r} has a 'cells' table that is not ddbench's (columns {', '.join(columns)}): "
                                 "pass a store written by `ddbench run`.")
        elif tables:
            raise StoreError(f"{name!r} is an SQLite database of something else (tables {', '.join(sorted(tables))}), "
                             "not a ddbench results store: pass another --store.")
        elif not create:
            raise StoreError(f"results store {name!r} holds no results: run `ddbench run --store {name}` first.")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        records = []
        for k, r, p, t in rows:
            if wanted is not None and k not in wanted:
                continue
            try:
                record = {**json.loads(r), "key": k, "provenance": json.loads(p), "finished_at": t}
            except (TypeError, ValueError) as exc:
                raise StoreError(f"results store {str(self.path)!r} has a corrupt row {k!r} ({exc}): delete it, or rerun with --force.") from exc
            records.append(check_record(record, f"row {k!r} of {str(self.path)!r}"))
        return records
