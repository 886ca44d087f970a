"""The facts of a board, computed once for the Markdown boards and the site.

A board is one task under one evaluation protocol (docs/design.md §4). :func:`board` gathers
what every rendering of it shows: its rows ranked into tiers (budget and label regime) with their
reference rows, its metric and direction, its extra columns, its finished records and the
footnotes of its rows' departures from the official code. :mod:`ddbench.results.leaderboard`
renders a :class:`Board` as Markdown, :mod:`ddbench.results.site` as HTML.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ddbench.results.records import DD_RANKING_COLUMNS, Row, footnote
from ddbench.vocab import FULL, PROTOCOLS

DD_RANKING_WEIGHT = 0.5
"""DD-Ranking's w, the weight of improvement over random against hard label recovery in its label-robust score."""
TRAINED = "trained model"
"""The label of the reference row beside ``full``: the learner trained on all the data, counted at its parameters."""
TEACHER_ROW = "store the teacher"
"""The label of the reference row of a teacher-regime tier: the stored teacher alone, at its parameter count."""
REGIME_TEXT = {"hard": "hard labels", "soft": "soft labels (N x C, charged)", "teacher": "a stored teacher (charged at its parameters)",
               "soft-bank": "a per-view soft-label bank (charged as stored)"}


def budget_key(budget: str) -> tuple[int, int]:
    """The sort key of a budget text: ``ipc`` before ``params``, then by value (anything else, e.g. ``full``, last)."""
    kind, _, value = budget.partition("=")
    return ({"ipc": 0, "params": 1}.get(kind, 2), int(value) if value.isdigit() else 0)


def direction(rows: Sequence[Row]) -> bool | None:
    """Whether the headline metric of ``rows`` (one task) is higher-is-better, as its records say."""
    return next((d for d in (r.higher_is_better(r.metric) for r in rows if r.metric) if d is not None), None)


def board_columns(rows: Sequence[Row]) -> list[str]:
    """The extra columns of a board: the union of its rows', DD-Ranking's first (in their order), the others sorted."""
    found = {k for r in rows for k in r.board_columns()}
    return [k for k in DD_RANKING_COLUMNS if k in found] + sorted(found - set(DD_RANKING_COLUMNS))


def board_name(task: str, protocol: str = "native") -> str:
    """The file stem of a board: ``<task>`` under ``native``, ``<task>-<protocol>`` otherwise."""
    return task if protocol == "native" else f"{task}-{protocol}"


def boards(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """The (task, protocol) boards of ``rows``, by task, native first."""
    order = {p: i for i, p in enumerate(PROTOCOLS)}
    return sorted({(r.task, r.protocol) for r in rows}, key=lambda b: (b[0], order.get(b[1], len(PROTOCOLS)), b[1]))


def record_protocol(record: dict[str, Any]) -> str:
    return str(record["config"].get("protocol", "native"))


def trained_model(full: Row) -> Row | None:
    """The ``trained model`` reference row of a ``full`` row: its accuracy, stored at the parameter count
    of the evaluation net (``None`` where the records hold no count)."""
    if not full.ok or not full.model_params or math.isnan(full.model_params):
        return None
    train_scalars = full.stored_params * full.compression
    return Row(full.task, TRAINED, FULL, full.metric, list(full.values), full.mean, full.std, full.nets, list(full.seeds),
               stored_params=full.model_params, compression=train_scalars / full.model_params, device=full.device,
               directions=dict(full.directions), config=full.config, label=TRAINED, model_params=full.model_params)


def teacher_rows(tier: Sequence[Row]) -> list[Row]:
    """The ``store the teacher`` reference rows of a tier: one per distinct teacher its rows stored
    (its test accuracy, counted at its parameters; a reference, not ranked)."""
    seen: dict[tuple[float, float], Row] = {}
    for r in tier:
        acc, params = r.extra.get("teacher_accuracy"), r.extra.get("teacher_params")
        if r.ok and acc is not None and params and not math.isnan(acc):
            key = (round(params), round(acc, 6))
            if key not in seen:
                train_scalars = r.stored_params * r.compression
                seen[key] = Row(r.task, TEACHER_ROW, r.budget, r.metric, [acc], acc, 0.0, 1, list(r.seeds), stored_params=params,
                                compression=train_scalars / params, device=r.device, directions=dict(r.directions),
                                config=r.config, label=TEACHER_ROW, regime="teacher")
    return list(seen.values())


def regimes_of(rows: Sequence[Row]) -> list[str]:
    """The label regimes of ``rows``, in :data:`REGIME_TEXT`'s order."""
    return [g for g in REGIME_TEXT if any(r.regime == g for r in rows)]


def references_of(rows: Sequence[Row]) -> list[Row]:
    """The reference rows of one board: each ``full`` row and its ``trained model`` row."""
    return [ref for r in rows if r.budget == FULL for ref in (r, trained_model(r)) if ref is not None]


@dataclass(frozen=True)
class Tier:
    """One table of a board: the rows of a budget and label regime, each with its rank (``1``, ``2``,
    ..., ``—`` for a row without a result, ``ref`` for a reference row)."""

    budget: str
    regime: str
    lines: list[tuple[str, Row]]


def tiers(rows: Sequence[Row], higher: bool) -> list[Tier]:
    """The tiers of one board, ranked by mean in the metric's direction; a tier's reference rows are the
    board's :func:`references_of` in the hard regime, :func:`teacher_rows` in the others. A board of
    ``full`` rows only has one tier of its references, budget ``full``."""
    references, out = references_of(rows), []
    for budget in sorted({r.budget for r in rows if r.budget != FULL}, key=budget_key):
        for regime in regimes_of(rows):
            tier = [r for r in rows if r.budget == budget and r.regime == regime]
            if not tier:
                continue
            ranked = sorted([r for r in tier if r.ok], key=lambda r: (-r.mean if higher else r.mean, r.label))
            lines = [(str(rank), r) for rank, r in enumerate(ranked, 1)] + [("—", r) for r in tier if not r.ok]
            out.append(Tier(budget, regime, lines + [("ref", r) for r in (references if regime == "hard" else teacher_rows(tier))]))
    if not any(r.budget != FULL for r in rows) and references:
        out.append(Tier(FULL, "hard", [("ref", r) for r in references]))
    return out


def _setup(row: Row) -> str | None:
    """What a row shares with the ``full`` row it is compared with: its settings but the distiller's options."""
    if row.config is None:
        return None
    return json.dumps({k: v for k, v in row.config.items() if k != "distiller_options"}, sort_keys=True, default=str)


def dd_ranking(rows: Sequence[Row], weight: float = DD_RANKING_WEIGHT) -> None:
    """Set DD-Ranking's scores in the extras of each budgeted accuracy row of one board whose
    inputs exist (docs/import.md): with accuracies as fractions of 1,
    ``hlr`` = Acc(whole train split, hard labels) − Acc(the row's inputs, hard labels), the latter the
    row's own in the hard regime and its ``teacher_free`` in the others; ``ior`` = Acc(row) − Acc(random
    subset), its gain vs random; ``lrs`` = (e^α − e^−1) / (e − e^−1) with α = w·ior − (1 − w)·hlr.
    The ``full`` row is the board's one with the row's settings (learner, profile, evaluation seeds...)."""
    fulls = {_setup(r): r for r in rows if r.budget == FULL and r.ok and r.metric == "accuracy"}
    for r in rows:
        for key in DD_RANKING_COLUMNS:
            r.extra.pop(key, None)
        full = fulls.get(_setup(r))
        if r.budget == FULL or not r.ok or r.metric != "accuracy" or full is None or r.config is None:
            continue
        hard = r.mean if r.regime == "hard" else r.extra.get("teacher_free", math.nan)
        if math.isnan(hard):
            continue
        hlr = (full.mean - hard) / 100
        r.extra["hlr"] = hlr
        if not math.isnan(r.gain_vs_random):
            ior = r.gain_vs_random / 100
            alpha = weight * ior - (1 - weight) * hlr
            r.extra["ior"], r.extra["lrs"] = ior, (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))


def departure(row: Row) -> str:
    """The footnote of a row trained under its method's departures from the official code."""
    return f"**{row.distiller}**: {footnote(row.deviations)}"


@dataclass(frozen=True)
class Board:
    """What every rendering of one board (a task under one protocol) shows."""

    task: str
    protocol: str
    rows: list[Row]
    records: list[dict[str, Any]]
    """The board's stored cells that were not skipped."""
    metric: str
    declared: bool | None
    """The metric's direction as the records state it (``None``: they do not; ranked higher-is-better)."""
    tiers: list[Tier]
    extras: list[str]
    references: list[Row]
    notes: dict[str, int]
    """The departures footnote of each distinct (distiller, departures) of the ranked rows, numbered in order."""
    lrs_weight: float = DD_RANKING_WEIGHT
    """The w of DD-Ranking's label-robust score on this board (:func:`dd_ranking`)."""

    @property
    def name(self) -> str:
        return board_name(self.task, self.protocol)

    @property
    def higher(self) -> bool:
        return self.declared is not False

    @property
    def better(self) -> str:
        """``higher is better`` or ``lower is better``."""
        return f"{'higher' if self.higher else 'lower'} is better"

    @property
    def regimes(self) -> list[str]:
        return regimes_of(self.rows)

    def note(self, row: Row) -> int | None:
        """The number of ``row``'s departures footnote (``None``: it departs from nothing)."""
        return self.notes[departure(row)] if row.deviations else None


def board(task: str, protocol: str, rows: Sequence[Row], records: Sequence[dict[str, Any]],
          lrs_weight: float = DD_RANKING_WEIGHT) -> Board:
    """The facts of the board of ``task`` under ``protocol`` from all the rows and records published,
    DD-Ranking's scores set on its rows with w = ``lrs_weight`` (:func:`dd_ranking`)."""
    rows = [r for r in rows if r.task == task and r.protocol == protocol]
    dd_ranking(rows, lrs_weight)
    declared = direction(rows)
    ranked = tiers(rows, declared is not False)
    notes: dict[str, int] = {}
    for _, r in (line for tier in ranked for line in tier.lines):
        if r.deviations:
            notes.setdefault(departure(r), len(notes) + 1)
    recs = [r for r in records if r["config"]["task"] == task and record_protocol(r) == protocol and r["status"] != "skipped"]
    return Board(task, protocol, rows, recs, next((r.metric for r in rows if r.metric), "metric"), declared, ranked,
                 board_columns(rows), references_of(rows), notes, lrs_weight)


def all_boards(rows: Sequence[Row], records: Sequence[dict[str, Any]], lrs_weight: float = DD_RANKING_WEIGHT) -> list[Board]:
    """Every board of ``rows``, by task, native first."""
    return [board(task, protocol, rows, records, lrs_weight) for task, protocol in boards(rows)]


def finished(records: Sequence[dict[str, Any]]) -> str:
    """How many cells ``records`` hold and when they finished, as the boards state it."""
    times = sorted(r["finished_at"] for r in records)
    return f"{len(records)} cells finished {times[0] if times else '?'} to {times[-1] if times else '?'}"


def ranked_by(metric: str, better: str, within: str) -> str:
    """The sentence that says how a board ranks its rows."""
    return (f"Ranked by mean {metric} ({better}) within {within}; ± is the std over all evaluation nets of all "
            "distillation seeds.")
