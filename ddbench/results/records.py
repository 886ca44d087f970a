"""The results record: one cell (:class:`Cell`), its result (:class:`CellResult`) and the aggregate
row of a board (:class:`Row`), with mean, std, gain vs random and metric per kparam defined once.

A stored *record* is the dictionary form of a :class:`CellResult` (:func:`result_to_dict`) plus
``key``, ``provenance`` and ``finished_at``; everything downstream of the store (boards, compare,
reports) reads records, never plugin classes, so it works with no plugin installed. A record says
which way each of its task's metrics is better (``higher_is_better``) and which of its extras
are board columns (``leaderboard_columns``); the harness-defined columns are :data:`COLUMNS`.

:func:`frame` turns records into a pandas DataFrame (one line per cell) and :func:`aggregate`
groups it into rows. This module imports neither torch nor the harness.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from ddbench.errors import StoreError
from ddbench.vocab import FULL, PROTOCOLS

if TYPE_CHECKING:  # the budget type lives with the interfaces (torch); records only need its text
    import pandas as pd

    from ddbench.vocab import Budget

RESULTS_VERSION = 1
"""Bumped when a change to ddbench changes results; part of every cell key, so a store never
passes off a result of another version as current (0: results stored before keys carried it)."""
LABEL_COLUMNS = ("teacher_free",)
"""Extras the harness records for artifacts outside the hard label regime and shows on every board:
the same inputs trained from the hard labels their teacher, soft labels or bank imply (docs/labels.md)."""
DD_RANKING_COLUMNS = ("hlr", "ior", "lrs")
"""DD-Ranking's scores, which a board sets on its rows where their inputs exist
(:func:`ddbench.results.board.dd_ranking`): hard label recovery, improvement over random and the
label-robust score, on fractions of 1."""
RUN_LENGTH_META = ("iterations", "stopped_early")
"""Keys of ``Artifact.meta`` kept in the results: how long a distiller ran (a time limit may cut it short).
They are board columns of every task (no direction: they describe a run, they do not rank it)."""
OVERRAN = "overran_s"
"""The extra the harness records when a cell's distillation ran past its time limit and still
finished inside the grace period (so the cell is ``ok``): the seconds past the limit, measured by
the harness, never read from a plugin. A board column of every task, like the run length."""
Status = Literal["ok", "failed", "skipped"]
IDENTITY = ("task", "distiller", "budget", "seed")
"""Config keys that name a row; every other key of a cell's config is a setting that keeps rows apart."""
BUDGET_TEXT = re.compile(r"^(ipc|params)=[1-9][0-9]*$")  # str(Budget), the form records store


# -- the numbers, defined once ---------------------------------------------------------------
def mean(values: Sequence[float]) -> float:
    """The mean of ``values`` (NaN when there are none)."""
    return statistics.fmean(values) if len(values) else math.nan


def std(values: Sequence[float]) -> float:
    """The population std of ``values`` (0 for fewer than two)."""
    return statistics.pstdev(values) if len(values) > 1 else 0.0


def nanmean(values: Iterable[float | None]) -> float:
    """The mean of the values that are numbers (NaN when none is)."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(kept) if kept else math.nan


def gain(metric_mean: float, random_ref: float | None) -> float | None:
    """Gain vs random: the metric minus the random real subset at the same budget, seed and recipe."""
    return None if random_ref is None or math.isnan(metric_mean) else metric_mean - random_ref


def per_kparam(metric_mean: float, stored_params: float) -> float:
    """The metric per thousand stored parameters (NaN without a count)."""
    return metric_mean / (stored_params / 1000) if stored_params else math.nan


@dataclass(frozen=True)
class Column:
    """A harness-defined column of every board: attribute of :class:`Row`, header, formats, direction."""

    name: str
    header: str
    spec: str  # format in tables (Markdown, the CLI)
    csv_spec: str
    higher_is_better: bool
    suffix: str = ""


COLUMNS = (
    Column("stored_params", "stored params", ".0f", ".0f", False),
    Column("metric_per_kparam", "{metric} / kparam", ".4g", ".6g", True),
    Column("gain_vs_random", "gain vs random", "+.2f", ".6g", True),
    Column("compression", "compression", ".1f", ".6g", True, "x"),
    Column("distill_s", "distill s", ".1f", ".4g", False),
    Column("eval_s", "eval s", ".1f", ".4g", False),
    Column("peak_mb", "peak MB", ".0f", ".4g", False),
)
MEDIAN_COLUMNS = ("distill_s", "eval_s", "peak_mb")
"""Columns whose per-cell values a row keeps: time and memory, compared by their medians over cells."""
HARNESS_DIRECTIONS = {c.name: c.higher_is_better for c in COLUMNS}
"""Which way each harness-defined column is better; a task's metrics say theirs in its records."""


def fmt(x: float | None, spec: str) -> str:
    """``x`` formatted, or '' for a missing number."""
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


# -- a cell and its result -------------------------------------------------------------------
@dataclass
class Cell:
    """One unit of work: a distiller on a task at a budget with one distillation seed."""

    task: str
    task_options: dict[str, Any]
    distiller: str
    distiller_options: dict[str, Any]
    budget: Budget | None  # None: budget-exempt reference row
    seed: int
    eval_seeds: list[int]
    learner: str
    learner_options: dict[str, Any]
    profile: str
    time_limit_s: float | None = None
    device_type: str = "cpu"
    results_version: int = RESULTS_VERSION
    protocol: str = "native"  # how the evaluation nets train: "native" or "common" (docs/design.md §4)

    @property
    def label(self) -> str:
        tail = "" if self.protocol == "native" else f" / {self.protocol}"
        return f"{self.task} / {self.distiller} / {self.budget or FULL} / seed {self.seed}{tail}"

    def config(self) -> dict[str, Any]:
        d = asdict(self)
        d["budget"] = str(self.budget) if self.budget else None
        return d

    def key(self) -> str:
        """A stable hash of everything that defines the cell's result. A ``native`` cell hashes as
        before protocols existed, so the cells of older stores keep their keys."""
        config = self.config()
        if config["protocol"] == "native":
            del config["protocol"]
        return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def distillation(self) -> str:
        """What defines the cell's distillation: everything but the protocol and the evaluation seeds
        (the cells of one distillation under both protocols share the artifact, docs/design.md §4)."""
        config = {k: v for k, v in self.config().items() if k not in ("protocol", "eval_seeds")}
        return json.dumps(config, sort_keys=True, default=str)


@dataclass
class CellResult:
    cell: Cell
    status: Status
    metric: str = ""
    values: list[float] = field(default_factory=list)  # headline metric per eval seed
    extra: dict[str, float] = field(default_factory=dict)  # other metrics (mean over seeds), diagnostics, run length
    stored_params: int = 0
    stored_bytes: int = 0
    by_tensor: dict[str, int] = field(default_factory=dict)
    by_dtype: dict[str, int] = field(default_factory=dict)
    compression: float = 0.0
    distill_s: float = 0.0
    eval_s: float = 0.0
    eval_mode: str = ""  # how the K evaluation nets trained: "ensemble" (vmapped) or "sequential[: reason]"
    peak_mb: float = 0.0
    device: str = ""
    error: str = ""
    traceback: str = ""
    random_ref: float | None = None  # mean metric of `random` at this budget under this cell's recipe
    recipe: dict[str, Any] = field(default_factory=dict)  # the evaluation recipe the nets trained with
    model_params: int = 0  # parameters of one evaluation net (what storing a trained net costs); 0: not recorded
    higher_is_better: dict[str, bool] = field(default_factory=dict)  # the task's metric directions (Task.higher_is_better)
    leaderboard_columns: list[str] = field(default_factory=list)  # extras the task shows on boards (Task.leaderboard_columns)
    regime: str = "hard"  # the artifact's label regime (ddbench.budget.labels.regime); "hard" for records older than regimes
    reference_regime: str = "hard"  # the regime random_ref was trained in (the artifact's teacher, or hard labels)
    # the method's departures from its official code in this cell (ddbench.contracts.deviations)
    deviations: list[dict[str, str]] = field(default_factory=list)
    # other tasks whose views the distiller read (RunContext.source_view), as asked for
    sources: list[str] = field(default_factory=list)
    threads: int = 0  # the torch thread count the cell computed with (0: not recorded)
    resumed_from: int = 0  # the step its distillation resumed at from a checkpoint (0: it ran from the start)

    @property
    def mean(self) -> float:
        return mean(self.values)

    @property
    def std(self) -> float:
        return std(self.values)

    @property
    def gain(self) -> float | None:
        """Metric minus the random-subset reference (same budget, seed and recipe)."""
        return gain(self.mean, self.random_ref)


RESULT_FIELDS = tuple(f.name for f in fields(CellResult) if f.name != "cell")
"""The fields a record stores beside its ``config``, from the dataclass itself."""
CELL_FIELDS = tuple(f.name for f in fields(Cell))
OPTIONAL_SETTINGS = ("time_limit_s", "device_type", "results_version", "protocol")  # filled in for older records (normalised)


def result_to_dict(result: CellResult) -> dict[str, Any]:
    """The record of ``result`` (without the store's ``key``, ``provenance`` and ``finished_at``)."""
    return {"config": result.cell.config(), **{f: getattr(result, f) for f in RESULT_FIELDS}}


def normalised(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record with the cell settings that older versions did not record filled in: no
    time limit, the device type of the device it ran on, results version 0, the native protocol;
    and no model parameter count (0)."""
    config = record["config"]
    device = str(record.get("device", "cpu"))
    defaults = {"time_limit_s": None, "device_type": "cpu" if device in ("cpu", "") else "cuda", "results_version": 0,
                "protocol": "native"}
    return {"model_params": 0, **record, "config": {**defaults, **config}}


def result_from_dict(data: dict[str, Any]) -> CellResult:
    """The :class:`CellResult` of a record (its budget parsed into a :class:`~ddbench.vocab.Budget`)."""
    from ddbench.vocab import Budget

    config = dict(normalised(data)["config"])
    config["budget"] = Budget.parse(config["budget"]) if config.get("budget") else None
    return CellResult(Cell(**config), **{f: data[f] for f in RESULT_FIELDS if f in data})


def _problem(record: Any) -> str:
    if not isinstance(record, dict):
        return f"is a {type(record).__name__}, not a result record"
    config = record.get("config")
    if not isinstance(config, dict):
        return "has no 'config' table"
    missing = [k for k in ("task", "distiller", "budget", "seed") if k not in config]
    missing += [k for k in ("status", "values", "metric") if k not in record]
    if missing:
        return f"lacks {', '.join(missing)}"
    unknown = sorted(set(config) - set(CELL_FIELDS))
    if unknown:
        return f"does not describe a cell (unknown setting(s) {', '.join(unknown)})"
    absent = [f.name for f in fields(Cell) if f.name not in config and f.name not in OPTIONAL_SETTINGS]
    if absent:
        return f"does not describe a cell (no setting(s) {', '.join(absent)})"
    budget = config["budget"]
    if budget is not None and not (isinstance(budget, str) and BUDGET_TEXT.match(budget)):
        return f"does not describe a cell (budget {budget!r} is not ipc=N or params=N)"
    if config.get("protocol", "native") not in PROTOCOLS:
        return f"does not describe a cell (protocol {config['protocol']!r} is not {' or '.join(PROTOCOLS)})"
    if record["status"] not in ("ok", "failed", "skipped"):
        return f"does not describe a cell (status {record['status']!r} is not ok, failed or skipped)"
    if not isinstance(record["values"], list) or not all(isinstance(v, (int, float)) for v in record["values"]):
        return "does not describe a cell ('values' is not a list of numbers)"
    if not isinstance(record.get("extra", {}), dict):
        return "does not describe a cell ('extra' is not a table)"
    return ""


def check_record(record: Any, where: str) -> dict[str, Any]:
    """``record`` (normalised) if it has the shape of a stored result, else a one-line :class:`StoreError`."""
    problem = _problem(record)
    if problem:
        raise StoreError(f"{where} {problem}: it is not a ddbench result record (regenerate it with ddbench).")
    return normalised(record)


# -- the aggregate row -----------------------------------------------------------------------
@dataclass
class Row:
    """One (task, distiller, budget, settings) aggregated over its distillation seeds and their
    evaluation nets, or one cell of a run (:func:`aggregate` with ``per_cell``)."""

    task: str
    distiller: str
    budget: str
    metric: str = ""
    values: list[float] = field(default_factory=list)  # every evaluation net of every seed
    mean: float = math.nan
    std: float = math.nan
    nets: int = 0
    seeds: list[int] = field(default_factory=list)
    stored_params: float = math.nan
    gain_vs_random: float = math.nan
    compression: float = math.nan
    distill_s: float = math.nan
    eval_s: float = math.nan
    peak_mb: float = math.nan
    model_params: float = math.nan  # parameters of one evaluation net (NaN: not recorded)
    device: str = ""
    failed: list[str] = field(default_factory=list)  # the errors of its failed cells
    skipped: list[str] = field(default_factory=list)  # the reasons of its skipped cells (per-cell rows only)
    extra: dict[str, float] = field(default_factory=dict)  # every extra metric, mean over cells
    columns: list[str] = field(default_factory=list)  # the extras its task shows on boards
    directions: dict[str, bool] = field(default_factory=dict)  # the task's metric directions
    config: dict[str, Any] | None = None  # the settings every cell of the row shares (None: unknown, e.g. an old CSV)
    label: str = ""  # the distiller and what sets this row apart on its board (label_rows)
    regime: str = "hard"  # the label regime of its artifacts (docs/labels.md)
    reference_regime: str = "hard"  # the regime its gain vs random was measured in
    per_cell: dict[str, list[float]] = field(default_factory=dict)  # MEDIAN_COLUMNS of each finished cell (empty: unknown, e.g. a CSV)
    by_tensor: dict[str, float] = field(default_factory=dict)  # stored params per tensor group (tensor_groups), mean over cells, by name
    # its method's departures from the official code (ddbench.contracts.deviations)
    deviations: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the row has a result (some cell finished)."""
        return self.nets > 0

    @property
    def protocol(self) -> str:
        """The row's evaluation protocol (``native`` where its settings are unknown)."""
        return "native" if self.config is None else str(self.config.get("protocol", "native"))

    @property
    def signature(self) -> str | None:
        return None if self.config is None else json.dumps(self.config, sort_keys=True, default=str)

    @property
    def metric_per_kparam(self) -> float:
        return per_kparam(self.mean, self.stored_params)

    @property
    def status(self) -> str:
        if not self.failed:
            return "ok"
        return f"{len(self.failed)} failed: {self.failed[0]}"

    def value(self, name: str) -> float:
        """A metric by name: the headline metric's name, an extra metric, or a column."""
        if name in (self.metric, "metric", "mean"):
            return self.mean
        if name in self.extra:
            return self.extra[name]
        return float(getattr(self, name, math.nan))

    def median(self, name: str) -> float:
        """The median over the row's cells of a :data:`MEDIAN_COLUMNS` column (its :meth:`value` where
        the cells are unknown)."""
        cells = self.per_cell.get(name)
        return statistics.median(cells) if cells else self.value(name)

    def higher_is_better(self, name: str) -> bool | None:
        """Which way ``name`` is better on this row (None: its records do not say)."""
        if name in ("metric", "mean"):
            name = self.metric
        if name in HARNESS_DIRECTIONS:
            return HARNESS_DIRECTIONS[name]
        return self.directions.get(name)

    def board_columns(self) -> list[str]:
        """The extras this row shows on a board: its task's declared columns, the run length, an
        overrun, the label columns and DD-Ranking's scores."""
        return [k for k in self.extra if k in self.columns or k in RUN_LENGTH_META or k == OVERRAN or k in LABEL_COLUMNS
                or k in DD_RANKING_COLUMNS]


GROUPED_PREFIXES = ("gen.", "teacher.")
"""Tensor families counted as one entry of a breakdown: a stored generator's and a teacher's weights."""


def tensor_groups(by_tensor: dict[str, int]) -> dict[str, int]:
    """A record's stored params per tensor with each :data:`GROUPED_PREFIXES` family summed under
    its name (``gen.inp.weight`` + ``gen.out.bias`` + ... -> ``gen``)."""
    out: dict[str, int] = {}
    for name, count in by_tensor.items():
        group = next((p.rstrip(".") for p in GROUPED_PREFIXES if name.startswith(p)), name)
        out[group] = out.get(group, 0) + int(count)
    return out


def breakdown(by_tensor: dict[str, float]) -> str:
    """A breakdown as table text, ``stage.end 2 · stage.lr 2 · x 7840`` ('' when unknown)."""
    return " · ".join(f"{k} {fmt(v, '.0f')}" for k, v in by_tensor.items())


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a cell's config: everything but the row's name (task, distiller, budget) and its seed."""
    return {k: v for k, v in config.items() if k not in IDENTITY}


def frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One line per record: the row it belongs to (task, distiller, budget, settings), its status,
    and its numbers (blank unless it finished). Reports of plugins may start from this too."""
    import pandas as pd

    lines = []
    for rec in records:
        c, ok = rec["config"], rec["status"] == "ok"
        values = list(rec["values"]) if ok else []
        cell_mean = mean(values)
        lines.append({
            "task": c["task"], "distiller": c["distiller"], "budget": c["budget"] or FULL,
            "settings": json.dumps(settings(c), sort_keys=True, default=str), "config": settings(c),
            "status": rec["status"], "error": None if ok else rec.get("error", ""),
            "seed": c["seed"] if ok else None, "metric": rec["metric"] if ok else None, "values": values, "mean": cell_mean,
            "gain": gain(cell_mean, rec.get("random_ref")) if ok else None,
            **{col: math.nan if not ok or rec.get(col) is None else float(rec[col])
               for col in ("stored_params", "compression", "distill_s", "eval_s", "peak_mb")},
            "model_params": float(rec.get("model_params") or math.nan) if ok else math.nan,
            "device": rec.get("device", "") if ok else None, "extra": dict(rec.get("extra", {})) if ok else None,
            "directions": dict(rec.get("higher_is_better", {})) if ok else None,
            "columns": list(rec.get("leaderboard_columns", [])) if ok else None,
            "regime": rec.get("regime", "hard") if ok else None, "reference_regime": rec.get("reference_regime", "hard") if ok else None,
            "by_tensor": tensor_groups(rec.get("by_tensor") or {}) if ok else None,
            "deviations": list(rec.get("deviations") or []) if ok else None,
        })
    return pd.DataFrame(lines, columns=["task", "distiller", "budget", "settings", "config", "status", "error", "seed", "metric",
                                        "values", "mean", "gain", "stored_params", "compression", "distill_s", "eval_s",
                                        "peak_mb", "model_params", "device", "extra", "directions", "columns", "regime",
                                        "reference_regime", "by_tensor", "deviations"])


GROUP = ["task", "distiller", "budget", "settings"]


def aggregate(records: Sequence[dict[str, Any]], per_cell: bool = False) -> list[Row]:
    """Rows of ``records``: grouped by (task, distiller, budget, settings), skipped cells left out,
    labelled (:func:`label_rows`) and sorted by task, budget and label; or with ``per_cell``, one
    row per record in the given order, skipped ones included (the table of a run)."""
    df = frame(records)
    if per_cell:
        return [_row(df.iloc[[i]]) for i in range(len(df))]
    df = df[df["status"] != "skipped"]
    rows = [_row(group) for _, group in df.groupby(GROUP, sort=False)]
    label_rows(rows)
    return sorted(rows, key=lambda r: (r.task, r.budget, r.label))


def _first(series: pd.Series) -> Any:
    present = series.dropna()
    return present.iloc[0] if len(present) else None


def _row(group: pd.DataFrame) -> Row:
    """The row of one group of :func:`frame` lines."""
    head = group.iloc[0]
    done = group[group["status"] == "ok"]
    row = Row(head["task"], head["distiller"], head["budget"], config=head["config"],
              failed=list(group.loc[group["status"] == "failed", "error"]), skipped=list(group.loc[group["status"] == "skipped", "error"]))
    if len(done):
        row.metric = done["metric"].iloc[0]
        row.values = [v for values in done["values"] for v in values]
        row.mean, row.std, row.nets = mean(row.values), std(row.values), len(row.values)
        row.seeds = sorted(int(s) for s in done["seed"])
        for col in ("stored_params", "compression", "distill_s", "eval_s", "model_params"):
            setattr(row, col, nanmean(done[col]))
        row.gain_vs_random = nanmean(done["gain"])
        row.peak_mb = float(done["peak_mb"].max())
        row.per_cell = {col: [float(x) for x in done[col] if not math.isnan(x)] for col in MEDIAN_COLUMNS}
        row.device = _first(done["device"]) or ""
        row.regime, row.reference_regime = _first(done["regime"]) or "hard", _first(done["reference_regime"]) or "hard"
        keys = sorted({k for extra in done["extra"] for k in extra})
        row.extra = {k: nanmean(extra.get(k, math.nan) for extra in done["extra"]) for k in keys}
        row.columns = list(dict.fromkeys(c for columns in done["columns"] for c in columns))
        names = sorted({k for counts in done["by_tensor"] for k in counts})
        row.by_tensor = {k: nanmean(counts.get(k, math.nan) for counts in done["by_tensor"]) for k in names}
        row.deviations = _first(done["deviations"]) or []  # one configuration: its cells share them
        for directions in done["directions"]:
            for k, v in directions.items():
                row.directions.setdefault(k, bool(v))
    return row


def directions(rows: Iterable[Row]) -> dict[str, bool]:
    """Every metric with a known direction in ``rows`` (the harness columns and what the records say)."""
    known = dict(HARNESS_DIRECTIONS)
    for row in rows:
        for k, v in row.directions.items():
            known.setdefault(k, v)
    return known


# -- labels ----------------------------------------------------------------------------------
def _flat(config: dict[str, Any]) -> dict[str, str]:
    """A row's settings as short ``name: value`` texts (distiller options apart: see :func:`label_rows`)."""
    out = {}
    for key, value in sorted(config.items()):
        if key in ("distiller_options", "protocol"):  # options: see label_rows; the protocol: each board has one
            continue
        if isinstance(value, dict):
            prefix = key.removesuffix("_options")
            out.update({f"{prefix}.{k}": _text(v) for k, v in sorted(value.items())})
        elif key == "eval_seeds":
            out["eval seeds"] = ",".join(map(str, value))
        elif key == "time_limit_s":
            out["time limit"] = "none" if value is None else f"{value:g} s"
        else:
            out[key.replace("_", " ")] = _text(value)
    return out


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def common_settings(rows: Sequence[Row]) -> dict[str, str]:
    """Each setting's most common value over ``rows`` (ties: the first in sorted order)."""
    counts: dict[str, Counter[str]] = {}
    for r in rows:
        if r.config is not None:
            for k, v in _flat(r.config).items():
                counts.setdefault(k, Counter())[v] += 1
    return {k: min(c, key=lambda v: (-c[v], v)) for k, c in sorted(counts.items())}


def label_rows(rows: Sequence[Row]) -> None:
    """Set each row's label: its distiller, the options given to it, and (in brackets) the settings
    in which it differs from most rows of its board (one task under one protocol), e.g.
    ``dsa (lr_img=10) [time limit: 30 s]``."""
    for task, protocol in {(r.task, r.protocol) for r in rows}:
        board = [r for r in rows if r.task == task and r.protocol == protocol]
        common = common_settings(board)
        for r in board:
            if r.config is None:
                r.label = r.label or r.distiller
                continue
            options = ", ".join(f"{k}={_text(v)}" for k, v in sorted(r.config.get("distiller_options", {}).items()))
            flat = _flat(r.config)
            differs = ", ".join(f"{k}: {flat.get(k, 'unset')}" for k in sorted({*flat, *common}) if flat.get(k) != common.get(k))
            r.label = r.distiller + (f" ({options})" if options else "") + (f" [{differs}]" if differs else "")


def footnote(records: Iterable[Mapping[str, str]]) -> str:
    """Recorded departures as one line of text: ``aspect: official X; here Y (why)``, joined by '; '."""
    return "; ".join(f"{r['aspect']}: official {r['official']}; here {r['ours']} ({r['why']})" for r in records)


def shared_timing_note(records: Sequence[dict[str, Any]]) -> str:
    """A board's line on timing when some of ``records`` ran where other cells could share their
    device (an executor's ``shared_device`` provenance), else ''."""
    shared = [r for r in records if (r.get("provenance") or {}).get("executor", {}).get("shared_device")]
    if not shared:
        return ""
    most = max(int(r["provenance"]["executor"].get("cells_per_device", 2)) for r in shared)
    return (f"- Timing: {len(shared)} of these {len(records)} cells ran where up to {most} cells at once shared a device "
            "(the ray executor with a fraction of a GPU or several cells per machine): their distill s, eval s and peak MB "
            "are not timed as on a dedicated device (docs/executors.md).")


@dataclass
class AnalysisRow:
    """One analysis of one artifact, as the store keeps it."""

    key: str
    analysis: str
    spec: str
    version: str
    task: str
    distiller: str
    label: str
    status: str = "failed"
    metrics: dict[str, float | bool] = field(default_factory=dict)
    declared: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    tensors_path: str = ""
    seconds: float = 0.0
    error: str = ""
    traceback: str = ""
