"""Where results are kept, and the one reader of every form they are kept in.

:class:`ResultStore` is the embedded SQLite store: every finished cell is committed at once. One
row per cell key (the hash of everything that defines the cell). Writes are single transactions
in WAL mode with a busy timeout, so a run killed at any point loses no finished cell, never leaves
a half-written row, and concurrent writers wait for each other instead of corrupting the file.
Default path: ``.ddbench/results.sqlite`` (``--store PATH`` or ``$DDBENCH_STORE``).

:func:`read_results` reads a store, an exported ``results.json`` or a leaderboard CSV (rows only:
a board CSV holds no cell records); ``ddbench leaderboard``, ``ddbench compare`` and plugin
commands all read through it, and every problem is a one-line :class:`~ddbench.errors.StoreError`.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ddbench.errors import StoreError
from ddbench.results.provenance import provenance
from ddbench.results.records import AnalysisRow, Cell, CellResult, Row, aggregate, check_record, label_rows, result_to_dict

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

ANALYSES_SCHEMA = """
CREATE TABLE IF NOT EXISTS analyses (
    key TEXT NOT NULL,           -- the cell key (or artifact content hash) the analysis read
    spec TEXT NOT NULL,          -- the analysis and its options, e.g. mixing or mixing:size=paper
    analysis TEXT, version TEXT, task TEXT, distiller TEXT,
    status TEXT NOT NULL,
    row TEXT NOT NULL,           -- JSON: the AnalysisRow fields (metrics, their declarations, info, error)
    finished_at TEXT NOT NULL,
    PRIMARY KEY (key, spec)
)
"""

COLUMNS = ("key", "suite", "task", "distiller", "budget", "seed", "status", "result", "config", "provenance", "finished_at")
SQLITE_MAGIC = b"SQLite format 3\x00"
WHAT = "a results store (.sqlite), a results.json or a leaderboard .csv"


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(len(SQLITE_MAGIC))


def default_store_path() -> Path:
    return Path(os.environ.get("DDBENCH_STORE", DEFAULT_PATH))


class ResultStore:
    """Results of cells keyed by :meth:`Cell.key`.

    ``create=False`` opens an existing store only (``leaderboard`` and ``compare`` never create
    one). A path that is a folder, a file that is not SQLite, a corrupt file (every page is read
    when it opens) or another program's SQLite database is a one-line
    :class:`~ddbench.errors.StoreError`, and the file is left as it was.
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
        with self._sql():
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            with self._sql():
                self._check_schema(name, create)
                self._check_pages()
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                self.db.execute(SCHEMA)
                self.db.execute(ANALYSES_SCHEMA)
        except StoreError:
            self.db.close()
            raise
        self._provenance = provenance(manager)

    @contextmanager
    def _sql(self) -> Iterator[None]:
        """Turn what SQLite raises (a corrupt page, a foreign file, a full disk) into one line naming the store."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            name = str(self.path)
            if "malformed" in str(exc) or "corrupt" in str(exc):
                raise StoreError(f"results store {name!r} is corrupt ({exc}); nothing was written to it: move it aside and rerun "
                                 f"(`sqlite3 {name} .recover | sqlite3 recovered.sqlite` salvages the rows it still holds), "
                                 "or pass another --store.") from None
            raise StoreError(f"results store {name!r} cannot be read ({exc}): it is corrupt or not a ddbench store.") from None

    def _check_pages(self) -> None:
        """Read every page once (``PRAGMA quick_check``), so that a corrupt store is refused before a run
        spends hours on cells it could not commit."""
        problems = [row[0] for row in self.db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError(f"database disk image is malformed: {problems[0]}")

    def _check_schema(self, name: str, create: bool) -> None:
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "cells" in tables:
            columns = tuple(row[1] for row in self.db.execute("PRAGMA table_info(cells)"))
            if columns != COLUMNS:
                raise StoreError(f"{name!r} has a 'cells' table that is not ddbench's (columns {', '.join(columns)}): "
                                 "pass a store written by `ddbench run`.")
        elif tables - {"analyses"}:
            raise StoreError(f"{name!r} is an SQLite database of something else (tables {', '.join(sorted(tables))}), "
                             "not a ddbench results store: pass another --store.")
        elif not create:
            raise StoreError(f"results store {name!r} holds no results: run `ddbench run --store {name}` first.")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, result: CellResult, suite: str = "", executor: dict[str, Any] | None = None) -> None:
        """Commit one finished cell (replacing an earlier result of the same cell); ``executor``: how
        it ran, kept in its provenance (:meth:`ddbench.contracts.executor.Executor.provenance`)."""
        c = result.cell
        prov = {**self._provenance, "device": result.device, **({"executor": executor} if executor else {})}
        row = (c.key(), suite, c.task, c.distiller, str(c.budget) if c.budget else "", c.seed, result.status,
               json.dumps(result_to_dict(result)), json.dumps(c.config(), sort_keys=True, default=str),
               json.dumps(prov), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        with self._sql(), self.db:  # BEGIN ... COMMIT: atomic even under SIGKILL
            self.db.execute("INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def put_analysis(self, row: AnalysisRow) -> None:
        """Commit one analysis row (replacing an earlier run of the same analysis spec on the same cell)."""
        values = (row.key, row.spec, row.analysis, row.version, row.task, row.distiller, row.status,
                  json.dumps(asdict(row), default=str), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        with self._sql(), self.db:
            self.db.execute("INSERT OR REPLACE INTO analyses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values)

    def analysis_done(self, key: str, spec: str, version: str) -> bool:
        """True when this analysis spec at this version already finished on this cell."""
        with self._sql():
            row = self.db.execute("SELECT status, version FROM analyses WHERE key = ? AND spec = ?", (key, spec)).fetchone()
        return row is not None and row[0] in ("ok", "skipped") and row[1] == version

    def analysis_rows(self) -> list[AnalysisRow]:
        """Every stored analysis row, by task, distiller and spec."""
        with self._sql():
            rows = self.db.execute("SELECT row FROM analyses ORDER BY task, distiller, spec, key").fetchall()
        return [AnalysisRow(**json.loads(r[0])) for r in rows]

    def done(self, cell: Cell) -> bool:
        """True when the cell finished (ok, or skipped as not applicable); failed cells rerun."""
        with self._sql():
            row = self.db.execute("SELECT status FROM cells WHERE key = ?", (cell.key(),)).fetchone()
        return row is not None and row[0] in ("ok", "skipped")

    def records(self, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Stored rows as dictionaries (result, provenance, finished_at), oldest first."""
        with self._sql():
            rows = self.db.execute("SELECT key, result, provenance, finished_at FROM cells ORDER BY finished_at, key").fetchall()
        wanted = None if keys is None else set(keys)
        records = []
        for k, r, p, t in rows:
            if wanted is not None and k not in wanted:
                continue
            try:
                record = {**json.loads(r), "key": k, "provenance": json.loads(p), "finished_at": t}
            except (TypeError, ValueError) as exc:
                raise StoreError(f"results store {str(self.path)!r} has a corrupt row {k!r} ({exc}): "
                                 "delete it, or rerun with --force.") from exc
            records.append(check_record(record, f"row {k!r} of {str(self.path)!r}"))
        return records


# -- the one reader ----------------------------------------------------------------------------
Kind = Literal["store", "json", "csv"]


@dataclass
class Results:
    """What results files hold: cell records (stores, results.json files) and the aggregated rows of
    leaderboard CSVs, which have no records behind them."""

    records: list[dict[str, Any]] = field(default_factory=list)
    board_rows: list[Row] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def rows(self) -> list[Row]:
        """Aggregated rows: those of the records (:func:`~ddbench.results.records.aggregate`), then the CSVs'."""
        return (aggregate(self.records) if self.records else []) + self.board_rows

    def require_records(self) -> list[dict[str, Any]]:
        """The records, or a one-line error when a source was a leaderboard CSV (rows, not records)."""
        if self.board_rows:
            raise StoreError(f"{self.sources[-1]!r} is a leaderboard CSV: it holds aggregated rows, not cell records; "
                             "pass a results store (.sqlite) or a results.json.")
        return self.records

    def __add__(self, other: Results) -> Results:
        """Both sources, a cell stored in both counted once (the one finished last)."""
        merged: dict[str, dict[str, Any]] = {}
        for i, rec in enumerate(self.records + other.records):
            key = rec.get("key") or f"#{i}"
            if key not in merged or rec.get("finished_at", "") >= merged[key].get("finished_at", ""):
                merged[key] = rec
        order = {id(r): i for i, r in enumerate(self.records + other.records)}
        records = sorted(merged.values(), key=lambda r: order[id(r)])
        return Results(records, self.board_rows + other.board_rows, self.sources + other.sources)


def kind_of(path: Path) -> Kind:
    """What ``path`` holds, from its suffix (an SQLite file of any name is a store)."""
    if path.suffix == ".csv":
        return "csv"
    if path.suffix == ".json":
        return "json"
    if path.suffix in (".sqlite", ".db") or (path.stat().st_size and _head(path) == SQLITE_MAGIC):
        return "store"
    raise StoreError(f"cannot read results from {str(path)!r}: use a .sqlite store, a results .json or a leaderboard .csv.")


def read_results(path: str | Path | None = None, kind: Kind | None = None) -> Results:
    """The results in ``path``: a results store (``kind="store"``, or ``None`` for the default store),
    an exported ``results.json`` or a leaderboard CSV; ``kind=None`` tells them apart by suffix.
    Every problem (missing, a folder, unreadable, not ddbench's) is a one-line :class:`StoreError`."""
    if path is None or kind == "store":
        with ResultStore(path, create=False) as store:
            return Results(store.records(), sources=[str(store.path)])
    path = Path(path)
    if path.is_dir():
        raise StoreError(f"results {str(path)!r} is a folder: pass {WHAT}.")
    if not path.is_file():
        raise StoreError(f"results {str(path)!r} not found: pass {WHAT}.")
    kind = kind or kind_of(path)
    if kind == "store":
        return read_results(path, "store")
    if kind == "json":
        return Results(_json_records(path), sources=[str(path)])
    return Results(board_rows=_csv_rows(path), sources=[str(path)])


def read_all(stores: Iterable[str | Path] = (), results: Iterable[str | Path] = ()) -> Results:
    """The results of every store in ``stores`` and every file in ``results`` (read by
    :func:`read_results`; nothing given: the default store), a cell kept in two of them counted once."""
    parts = [read_results(path, "store") for path in stores] + [read_results(path) for path in results]
    return sum(parts[1:], parts[0]) if parts else read_results()


def _json_records(path: Path) -> list[dict[str, Any]]:
    """The records of an exported ``results.json`` (as ``ddbench leaderboard`` writes them)."""
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{str(path)!r} is not a readable results.json ({type(exc).__name__}): "
                         "pass one written by `ddbench leaderboard`.") from exc
    if not isinstance(records, list):
        raise StoreError(f"{str(path)!r} holds no list of result records: pass a results.json written by `ddbench leaderboard`.")
    return [check_record(r, f"record #{i + 1} of {str(path)!r}") for i, r in enumerate(records)]


CSV_COLUMNS = ("task", "distiller", "budget", "metric", "mean")
"""The columns a leaderboard CSV must have to be read back (the rest is optional)."""


def _csv_rows(path: Path) -> list[Row]:
    """The rows of a leaderboard CSV (as :func:`ddbench.results.leaderboard.to_csv` writes them)."""
    rows = []
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise StoreError(f"{str(path)!r} is not a leaderboard CSV (no column {', '.join(missing)}): "
                                 "pass one written by `ddbench leaderboard`.")
            for line, d in enumerate(reader, start=2):
                try:
                    rows.append(_csv_row(d))
                except (TypeError, ValueError) as exc:
                    raise StoreError(f"{str(path)!r} line {line} is malformed ({exc}): "
                                     "pass a CSV written by `ddbench leaderboard`.") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise StoreError(f"{str(path)!r} is not a readable CSV ({exc}).") from exc
    label_rows([r for r in rows if not r.label])
    return rows


def _csv_row(d: dict[str, str]) -> Row:
    def num(k: str) -> float:
        return float(d[k]) if d.get(k) not in (None, "") else math.nan

    mean = num("mean")
    nets = 0 if math.isnan(mean) else int(d["nets"]) if d.get("nets") else 1
    higher = d.get("higher_is_better") or ""
    if higher not in ("", "true", "false"):
        raise ValueError(f"higher_is_better is {higher!r}, not true or false")
    row = Row(d["task"], d["distiller"], d["budget"], d["metric"], mean=mean, std=num("std"), nets=nets,
              seeds=[int(s) for s in (d.get("seeds") or "").split()], stored_params=num("stored_params"),
              gain_vs_random=num("gain_vs_random"), compression=num("compression"), distill_s=num("distill_s"),
              eval_s=num("eval_s"), peak_mb=num("peak_mb"), model_params=num("model_params"), device=d.get("device") or "",
              directions={d["metric"]: higher == "true"} if higher else {},
              config=json.loads(d["settings"]) if d.get("settings") else None, label=d.get("label") or "",
              regime=d.get("regime") or "hard", reference_regime=d.get("reference_regime") or "hard")
    if d.get("status", "ok") != "ok":
        row.failed = [d["status"]]
    return row
