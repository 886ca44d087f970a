"""What ``ddbench run`` prints: per task and budget one table ranked as on the board, the skipped
cells as one line per reason, then where the results are and the commands to go on with.

The tables keep the columns a person reads at a glance (rank, distiller, metric ± std, stored
params, metric per kparam, gain vs random, the label regime where a budget has several, and the
metric under each other protocol), under short headers that :data:`LEGEND` explains, so that they
fit a terminal; the board (``ddbench leaderboard``) has every column, the footnotes and the plots.
"""
from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from ddbench.results.board import boards, direction, tiers
from ddbench.results.records import COLUMNS, OVERRAN, CellResult, Row, aggregate, fmt, result_to_dict
from ddbench.vocab import FULL

GLANCE = {"stored_params": "params", "metric_per_kparam": "per kparam", "gain_vs_random": "vs random"}
"""The harness columns (:data:`~ddbench.results.records.COLUMNS`) a run's tables show, by their headers there."""
LEGEND = {"params": "stored parameters, counted by the harness", "per kparam": "the metric per 1,000 of them",
          "vs random": "the metric minus a random real subset's at the same budget, seed and recipe",
          "labels": "the label regime (docs/labels.md); each is ranked apart", "common": "the metric under the common protocol "
          "(the task's one recipe)", "native": "the metric under the native protocol (each method's own recipe)"}
"""What the short headers of a run's tables mean (those a table shows are explained below the tables)."""
WIDTH = 100  # the lines of text around the tables wrap at this width
DEFAULT_BOARD = Path("leaderboards/default/results.json")
"""The committed board of the default suite (in a checkout): the baseline a run of its cells is compared with."""


def summary(results: Sequence[dict[str, Any] | CellResult], store: Path | str) -> str:
    """The run's tables, its skipped and failed cells, and where its results are, with the next commands."""
    records = [result_to_dict(r) if isinstance(r, CellResult) else r for r in results]
    tables = [task_tables(records, task) for task in dict.fromkeys(r["config"]["task"] for r in records)]
    parts = [text for text, _ in tables if text]
    shown = {header for _, headers in tables for header in headers}
    if parts:
        legend = "; ".join(f"{h}: {text}" for h, text in LEGEND.items() if h in shown)
        parts.append(textwrap.fill(f"{legend}; ref: a reference, not ranked.", WIDTH))
    parts += [text for text in (skipped_lines(records), failed_lines(records), overran_lines(records)) if text]
    parts.append(next_steps(records, store))
    return "\n\n".join(parts)


def task_tables(records: Sequence[dict[str, Any]], task: str) -> tuple[str, set[str]]:
    """One table per budget of ``task``, ranked as on its first board (native where it has one) in
    each label regime, with the other protocols' metric beside each row; and the headers they show."""
    rows = aggregate([r for r in records if r["config"]["task"] == task])
    if not rows:
        return "", set()
    ranked, *others = [protocol for _, protocol in boards(rows)]
    mine = [r for r in rows if r.protocol == ranked]
    metric = next((r.metric for r in mine if r.metric), "metric")
    higher = direction(mine)
    beside = {p: {_key(r): r for r in rows if r.protocol == p and r.ok} for p in others}
    columns = [c for c in COLUMNS if c.name in GLANCE]
    by_budget: dict[str, list[tuple[str, str, Row]]] = {}
    for tier in tiers(mine, True if higher is None else higher):
        by_budget.setdefault(tier.budget, []).extend((rank, tier.regime, r) for rank, r in tier.lines)
    out, shown = [], set()
    for budget, lines in by_budget.items():
        regimes = len({regime for _, regime, _ in lines}) > 1
        table = [[rank, r.label or r.distiller, f"{fmt(r.mean, '.2f')} ± {fmt(r.std, '.2f')}" if r.ok else "",
                  *[fmt(getattr(r, c.name), c.spec) if r.ok else "" for c in columns],
                  *([regime] if regimes else []),
                  *[fmt(beside[p][_key(r)].mean, '.2f') if _key(r) in beside[p] else "" for p in others]]
                 for rank, regime, r in lines]
        headers = ["rank", "distiller", f"{metric} ± std", *[GLANCE[c.name] for c in columns], *(["labels"] if regimes else []), *others]
        shown.update(headers)
        where = "the whole train split" if budget == FULL else f"budget {budget}"
        title = f"{task}, {where}: ranked by {metric} under the {ranked} protocol" + ("" if higher is not False else " (lower is better)")
        out.append(f"{title}\n{tabulate(table, headers=headers, tablefmt='simple', disable_numparse=True)}")
    return "\n\n".join(out), shown


def _key(r: Row) -> str:
    """What a row is apart from its protocol: the same distillation's row under another protocol has it too."""
    return json.dumps([r.label, r.budget, {k: v for k, v in (r.config or {}).items() if k != "protocol"}], sort_keys=True, default=str)


def skipped_lines(records: Sequence[dict[str, Any]]) -> str:
    """The skipped cells, one line per reason (a reason that starts with its distiller's name counts
    once for every distiller): how many, which distillers and tasks, why."""
    reasons: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["status"] == "skipped":
            name, error = r["config"]["distiller"], str(r["error"])
            reasons.setdefault(error.removeprefix(f"{name} ") if error.startswith(f"{name} ") else error, []).append(r)
    if not reasons:
        return ""
    lines = [f"{sum(map(len, reasons.values()))} cells skipped, by reason:"]
    for reason, cells in reasons.items():
        names = ", ".join(sorted({c["config"]["distiller"] for c in cells}))
        tasks = ", ".join(dict.fromkeys(c["config"]["task"] for c in cells))
        lines.append(textwrap.fill(f"{len(cells)} ({names} on {tasks}): {reason}", WIDTH, initial_indent="  ", subsequent_indent="    "))
    return "\n".join(lines)


def failed_lines(records: Sequence[dict[str, Any]]) -> str:
    """The failed cells, one line each: which cell, and its error."""
    failed = [r for r in records if r["status"] == "failed"]
    if not failed:
        return ""
    lines = [f"{len(failed)} cells failed (their tracebacks are in the store):"]
    for r in failed:
        c = r["config"]
        where = f"{c['task']} / {c['distiller']} / {c['budget'] or FULL} / seed {c['seed']} / {c.get('protocol', 'native')}"
        lines.append(textwrap.fill(f"{where}: {r['error']}", WIDTH, initial_indent="  ", subsequent_indent="    "))
    return "\n".join(lines)


def overran_lines(records: Sequence[dict[str, Any]]) -> str:
    """The cells that ran past their time limit and finished inside the grace period, one line each:
    which cell, how long it distilled against its limit."""
    over = [r for r in records if r["status"] == "ok" and OVERRAN in r.get("extra", {})]
    if not over:
        return ""
    lines = [(f"{len(over)} cells ran past their time limit and finished inside the grace period (kept, with the seconds "
              f"over in the boards' {OVERRAN} column):")]
    for r in over:
        c = r["config"]
        where = f"{c['task']} / {c['distiller']} / {c['budget'] or FULL} / seed {c['seed']} / {c.get('protocol', 'native')}"
        limit = c.get("time_limit_s") or 0.0
        lines.append(textwrap.fill(f"{where}: distilled {r['distill_s']:.1f} s against a {limit:g} s limit "
                                   f"({r['extra'][OVERRAN]:.1f} s over)", WIDTH, initial_indent="  ", subsequent_indent="    "))
    return "\n".join(lines)


def next_steps(records: Sequence[dict[str, Any]], store: Path | str) -> str:
    """Where the results are and the commands that show them in full or check them against a baseline
    (the committed default board where it holds every cell of the run)."""
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "skipped", "failed")}
    on_board = DEFAULT_BOARD.is_file() and _configs(records) <= _configs(json.loads(DEFAULT_BOARD.read_text()))
    old = str(DEFAULT_BOARD) if on_board else "OLD.sqlite|results.json"
    return "\n".join([
        f"Results: {len(records)} cells ({', '.join(f'{n} {s}' for s, n in counts.items())}) in {store}. Next:",
        "  the boards (every column, the footnotes, the plots) and their site:",
        f"    ddbench leaderboard --store {store} --out BOARD_DIR --site SITE_DIR",
        "  what moved against " + ("the committed default board:" if old == str(DEFAULT_BOARD) else "a baseline run:"),
        f"    ddbench compare {old} {store}",
    ])



def _configs(records: Sequence[dict[str, Any]]) -> set[str]:
    return {json.dumps(r["config"], sort_keys=True, default=str) for r in records}
