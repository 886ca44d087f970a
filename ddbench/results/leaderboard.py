"""Leaderboards from stored records: Markdown (ranked within budget tiers), CSV and a Pareto plot.

Input is a list of stored records (:func:`ddbench.results.store.read_results`). A row aggregates
the distillation seeds of one configuration (:func:`ddbench.results.records.aggregate`): cells that
differ in anything else (distiller, learner or task options, profile, evaluation seeds, time
limit, device type, results version) are separate rows, labelled by what sets them apart. Each
row's metric is ranked in the direction its records state (``higher_is_better``, from the task);
a board's extra columns are the ones its task declares (``leaderboard_columns``), the run
length (:data:`~ddbench.results.records.RUN_LENGTH_META`) and the seconds a cell ran past its time
limit (:data:`~ddbench.results.records.OVERRAN`); every other extra stays in ``results.json``.
The Markdown depends only on the records, so regenerating from committed results reproduces it
byte for byte. Plugins add their own reports beside these (``ddbench_register_reports``).

A board is one task under one evaluation protocol (docs/design.md §4): ``<task>.md`` for
``native`` (each method's own recipe), ``<task>-common.md`` for ``common`` (the task's one recipe,
stated in its header); a task with both links each to the other and shows them side by side. Each
``full`` row that recorded its evaluation net's parameter count has a ``trained model`` reference
row beside it: full's accuracy at the cost of storing the trained net. A board's facts (tiers,
ranks, references, footnotes) come from :func:`ddbench.results.board.board`, as the site's do.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from ddbench.results.board import (
    DD_RANKING_WEIGHT,
    REGIME_TEXT,
    TEACHER_ROW,
    TRAINED,
    Board,
    Tier,
    all_boards,
    board,
    board_name,
    budget_key,
    finished,
    ranked_by,
    teacher_rows,
    trained_model,
)
from ddbench.results.plotting import figure
from ddbench.results.records import COLUMNS, DD_RANKING_COLUMNS, Row, aggregate, breakdown, common_settings, fmt, shared_timing_note
from ddbench.vocab import FULL, PROTOCOL_FIELDS, PROTOCOLS, protocol_part

CSV_FIELDS = ["task", "distiller", "budget", "metric", "mean", "std", "nets", "seeds", "stored_params", "metric_per_kparam",
              "gain_vs_random", "compression", "distill_s", "eval_s", "peak_mb", "model_params", "device", "status", "label",
              "settings", "higher_is_better", "regime", "reference_regime"]
MARKERS = {"hard": "o", "soft": "s", "teacher": "^", "soft-bank": "D"}  # one plot marker shape per label regime
BREAKDOWN = "stored by tensor"
"""The column of a table whose rows store more than inputs: stored params per tensor (a generator's
or a teacher's weights summed as ``gen``, ``teacher``), as the harness counted them."""
BOARDS = "boards"
"""The name of the generic boards among the reports ``ddbench leaderboard --report`` chooses from."""


def section(heading: str, *blocks: str) -> str:
    """A Markdown section: its heading and blocks, a blank line between each."""
    return "\n\n".join([heading, *blocks])


def _recipe_text(recipe: dict[str, Any]) -> str:
    return ", ".join(f"`{k}` {v}" for k, v in recipe.items())


def _protocol_fact(b: Board, others: list[str]) -> str:
    links = "".join(f" The {p} protocol's board: [{board_name(b.task, p)}.md]({board_name(b.task, p)}.md)." for p in others)
    if b.protocol != "common":
        return (f"- Protocol: {b.protocol}: each row trained with its method's own evaluation recipe (the task's, updated by what "
                f"the artifact declares), as the papers report; rows may differ in augmentation and epochs, and gain vs random "
                f"uses each row's recipe.{links}")
    used = sorted({json.dumps(protocol_part(r.get("recipe", {}))) for r in b.records if r["status"] == "ok"})
    stated = "; ".join(_recipe_text(json.loads(u)) for u in used) or "none recorded"
    return (f"- Protocol: common: every row trained with the task's one recipe ({stated}), whatever its method "
            f"declares for {', '.join(f'`{f}`' for f in PROTOCOL_FIELDS)}; a method's other declarations (a learned "
            f"lr, implied labels, learner options) are part of its artifact and still apply.{links}")


def _regimes_fact(b: Board) -> str:
    if b.regimes in (["hard"], []):
        return ""
    return ("- Label regimes (docs/labels.md): each budget's rows are ranked within their regime; a budget "
            "bounds the data, and a regime's label storage (soft labels, a teacher, a bank) is charged on top, in stored "
            "params and per kparam. In the teacher regime, gain vs random is against a random subset with the same "
            "teacher and recipe; in the soft and soft-bank regimes, which store no teacher to relabel it with, against "
            f"the hard-label random subset (the CSV's `reference_regime`); `teacher_free` is the {b.metric} of the same inputs "
            f"with the hard labels the teacher (soft labels, bank) implies; `{TEACHER_ROW}` is the teacher alone at its parameter count.")


def dd_ranking_fact(b: Board) -> str:
    """The bullet that defines DD-Ranking's columns, where the board shows them ('' elsewhere)."""
    if not set(DD_RANKING_COLUMNS) & set(b.extras):
        return ""
    return dd_ranking_text(b.lrs_weight)


def dd_ranking_text(weight: float) -> str:
    """DD-Ranking's columns defined next to gain vs random (docs/import.md)."""
    return (f"- DD-Ranking's scores, so a row reads as in that benchmark: `hlr` = `{FULL}`'s accuracy minus the row's inputs' with "
            "hard labels (its own in the hard regime, its `teacher_free` in the others); `ior` = gain vs random; `lrs` = "
            f"(e^α − e^−1) / (e − e^−1) with α = w·ior − (1 − w)·hlr, w = {weight:g}. All three on fractions of 1 (accuracy / 100): "
            "DD-Ranking's code feeds percentages into α, so its own LRS leaves [0, 1].")


def facts(b: Board, regenerate: str, others: list[str]) -> str:
    """The bullet list under a board's title: provenance, cells, ranking, protocol, settings, regimes, timing, how to regenerate."""
    recs, metric = b.records, b.metric
    prov = recs[0]["provenance"] if recs else {}
    devices = sorted({r["device"] for r in recs if r["device"]})
    profiles = sorted({r["config"]["profile"] for r in recs})
    eval_seeds = sorted({len(r["config"]["eval_seeds"]) for r in recs})
    common = ", ".join(f"{k}: {v}" for k, v in common_settings(b.rows).items())
    how = b.better + ("" if b.declared is not None else ", assumed: the records do not say")
    full = [r for r in b.rows if r.budget == FULL]
    trained_note = (f" `{TRAINED}` is the learner trained on the whole train split (`{FULL}`'s {metric}) counted at the parameters "
                    "of its network: what storing the trained model instead of data would cost (a reference, not ranked)."
                    if len(b.references) > len(full) else "")
    bullets = [
        (f"- Provenance: ddbench {prov.get('ddbench', '?')} (commit {prov.get('commit') or 'unknown'}), torch {prov.get('torch', '?')}, "
        f"Python {prov.get('python', '?')}; device: {', '.join(devices) or '?'}."),
        (f"- {finished(recs)}; profile {', '.join(profiles)}; {', '.join(map(str, eval_seeds))} evaluation nets per artifact; "
        f"final-epoch test {metric}, nothing selected on test."),
        (f"- {ranked_by(metric, how, 'each budget tier')} `{FULL}` is the whole train split (a reference, not ranked); gain vs "
        f"random = metric minus a random real subset at the same budget, seed and evaluation recipe.{trained_note}"),
        _protocol_fact(b, others),
        f"- Settings: {common or 'none recorded'}; a row that differs says how, in brackets after its distiller.",
        _regimes_fact(b),
        dd_ranking_fact(b),
        shared_timing_note(recs),  # cells that shared a device (docs/executors.md)
        f"- Regenerate: `{regenerate}`",
    ]
    return "\n".join(bullet for bullet in bullets if bullet)


def tier_section(b: Board, tier: Tier) -> str:
    """The table of one tier, each row marked with its departures footnote."""
    wide = shows_breakdown([r for _, r in tier.lines])
    table = [table_line(rank, r, b.extras, f" [^{b.note(r)}]" if b.note(r) else "", wide) for rank, r in tier.lines]
    headers = ["rank", "distiller", f"{b.metric} ± std", "nets", *[c.header.format(metric=b.metric) for c in COLUMNS], *b.extras,
               *([BREAKDOWN] if wide else []), "status"]
    title = ("## Reference" if tier.budget == FULL else f"## Budget {tier.budget}" +
             ("" if b.regimes == ["hard"] else f", {REGIME_TEXT[tier.regime]}"))
    return section(title, tabulate(table, headers=headers, tablefmt="github", disable_numparse=True))


def departures_section(b: Board) -> str:
    """The footnotes of the board's rows trained under departures from their official code."""
    if not b.notes:
        return ""
    return section("## Departures from the official code",
                   "Each marked row was trained under these departures of its method from its authors' official code "
                   "(declared by the method, recorded with each cell; docs/methods.md lists every method's).",
                   "\n".join(f"[^{n}]: {text}" for text, n in b.notes.items()))


def markdown(task: str, rows: list[Row], records: list[dict[str, Any]], regenerate: str, protocol: str = "native",
             lrs_weight: float = DD_RANKING_WEIGHT) -> str:
    """The leaderboard page of one task under one protocol (DD-Ranking's w = ``lrs_weight``)."""
    b = board(task, protocol, rows, records, lrs_weight)
    task_rows = [r for r in rows if r.task == task]
    others = [p for p in PROTOCOLS if p in {r.protocol for r in task_rows} and p != protocol]
    sections = [
        ("title", f"# ddbench leaderboard: {task}" + (f" ({protocol} protocol)" if protocol != "native" else "")),
        ("facts", facts(b, regenerate, others)),
        *[(f"budget {tier.budget}, {tier.regime}", tier_section(b, tier)) for tier in b.tiers],
        ("departures", departures_section(b)),
        ("side by side", side_by_side(task, task_rows, b.metric) if others else ""),
    ]
    return "\n\n".join(text for _, text in sections if text) + "\n"


def _unprotocolled(r: Row) -> tuple[str, str, str]:
    config = {k: v for k, v in (r.config or {}).items() if k != "protocol"}
    return r.distiller, r.budget, json.dumps(config, sort_keys=True, default=str)


def side_by_side(task: str, rows: list[Row], metric: str) -> str:
    """The section that sets a task's rows under the two protocols side by side (a row of the same
    distiller, budget and settings under each)."""
    pairs: dict[tuple[str, str, str], dict[str, Row]] = {}
    for r in rows:
        if r.ok:
            pairs.setdefault(_unprotocolled(r), {})[r.protocol] = r
    table = []
    for key in sorted(pairs, key=lambda k: (k[1] == FULL, budget_key(k[1]) if k[1] != FULL else (0, 0),
                                            (pairs[k].get("native") or pairs[k]["common"]).label)):
        native, common = pairs[key].get("native"), pairs[key].get("common")
        label = (native or common).label  # type: ignore[union-attr]  # every pair has one of the two
        change = common.mean - native.mean if native and common else math.nan
        table.append([label, key[1], fmt(native.mean, ".2f") if native else "", fmt(common.mean, ".2f") if common else "",
                      fmt(change, "+.2f")])
    headers = ["distiller", "budget", f"native {metric}", f"common {metric}", "common − native"]
    return section("## Native and common protocols side by side",
                   f"Mean {metric} of each distiller and budget: native from "
                   f"[{board_name(task, 'native')}.md]({board_name(task, 'native')}.md), "
                   f"common from [{board_name(task, 'common')}.md]({board_name(task, 'common')}.md).",
                   tabulate(table, headers=headers, tablefmt="github", disable_numparse=True))


def cells(r: Row) -> list[str]:
    """The harness-defined columns of ``r`` as table text (:data:`~ddbench.results.records.COLUMNS`)."""
    out = []
    for c in COLUMNS:
        text = fmt(getattr(r, c.name), c.spec)
        out.append(text + (c.suffix if r.ok else ""))
    return out


def shows_breakdown(tier: Sequence[Row]) -> bool:
    """Whether a table shows :data:`BREAKDOWN`: some row of it stores more than inputs ``x`` and
    labels ``y`` (stage boundaries and rates, a generator, a teacher, a label bank)."""
    return any(set(r.by_tensor) - {"x", "y"} for r in tier if r.ok and r.budget != FULL)


def table_line(rank: str, r: Row, extras: list[str], note: str = "", wide: bool = False) -> list[str]:
    """A board's table line: rank, label (and ``note``), mean ± std, nets, the harness columns, ``extras``,
    the :data:`BREAKDOWN` where the table is ``wide``, and the status."""
    return [rank, (r.label or r.distiller) + note, f"{fmt(r.mean, '.2f')} ± {fmt(r.std, '.2f')}" if r.ok else "", str(r.nets),
            *cells(r), *[fmt(r.extra.get(k, math.nan), '.4g') for k in extras], *([breakdown(r.by_tensor)] if wide else []), r.status]


def to_csv(rows: list[Row], extras: Sequence[str] = ()) -> str:
    """The CSV of a board's ``rows``: :data:`CSV_FIELDS`, then the board's ``extras`` (the task's own
    columns and DD-Ranking's ``hlr``, ``ior``, ``lrs``), empty where a row has none."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*CSV_FIELDS, *extras], lineterminator="\n")
    writer.writeheader()
    for r in rows:
        higher = r.higher_is_better(r.metric) if r.metric else None
        writer.writerow({"task": r.task, "distiller": r.distiller, "label": r.label, "budget": r.budget, "metric": r.metric,
                         "mean": fmt(r.mean, ".6g"), "std": fmt(r.std, ".6g"), "nets": r.nets,
                         "seeds": " ".join(map(str, r.seeds)), **{c.name: fmt(getattr(r, c.name), c.csv_spec) for c in COLUMNS},
                         "device": r.device, "status": r.status, "settings": r.signature or "",
                         "higher_is_better": "" if higher is None else str(higher).lower(), "model_params": fmt(r.model_params, ".0f"),
                         "regime": r.regime, "reference_regime": r.reference_regime,
                         **{k: fmt(r.extra.get(k, math.nan), ".6g") for k in extras}})
    return buf.getvalue()


def pareto(points: list[tuple[float, float]], higher: bool = True) -> list[tuple[float, float]]:
    """Points not dominated by one with fewer (or equal) stored params and a better metric."""
    front: list[tuple[float, float]] = []
    best = -math.inf if higher else math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1] if higher else p[1])):
        if (y > best) if higher else (y < best):
            front.append((x, y))
            best = y
    return front


def plot(b: Board, path: Path) -> None:
    """Metric versus stored parameters (log x) per method, the Pareto front and reference lines."""
    rows = [r for r in b.rows if r.ok]
    with figure(path, 110, figsize=(7, 4.5)) as (_, ax):
        for name in sorted({r.label for r in rows if r.budget != FULL}):
            series = [r for r in rows if r.label == name and r.budget != FULL]
            pts = sorted((r.stored_params, r.mean, r.std) for r in series)
            style = {"linestyle": "--", "color": "gray"} if series[0].distiller == "random" else {}
            regime = series[0].regime
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker=MARKERS.get(regime, "o"), capsize=3,
                        label=name + ("" if regime == "hard" else f" [{regime}]"), **style)
        for r in rows:
            if r.budget == FULL:
                ax.axhline(r.mean, color="black", linestyle=":", label=f"{r.label}: whole train split ({r.stored_params:.0f} params)")
                ax.plot([r.stored_params], [r.mean], marker="*", markersize=12, color="black", linestyle="none")
                model = trained_model(r)
                if model is not None:
                    ax.plot([model.stored_params], [model.mean], marker="P", markersize=10, color="black", linestyle="none",
                            label=f"{TRAINED} ({model.stored_params:.0f} params)")
        for ref in teacher_rows([r for r in rows if r.regime == "teacher" and r.budget != FULL]):
            ax.plot([ref.stored_params], [ref.mean], marker=MARKERS["teacher"], markersize=10, color="black", linestyle="none",
                    label=f"{TEACHER_ROW} ({ref.stored_params:.0f} params)")
        front = pareto([(r.stored_params, r.mean) for r in rows if r.budget != FULL], b.higher)
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="red", alpha=0.4, linewidth=4, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("stored parameters (counted by the harness)")
        ax.set_ylabel(f"test {rows[0].metric if rows else 'metric'}")
        ax.set_title(f"ddbench: {b.task}" + (f" ({b.protocol} protocol)" if b.protocol != "native" else ""))
        ax.legend(fontsize=8, loc="best")
        ax.grid(True, which="both", alpha=0.3)


def regenerate_command(out: Path, records_file: str = "results.json", report: str | None = None,
                       lrs_weight: float = DD_RANKING_WEIGHT) -> str:
    """The command that rebuilds a board in ``out`` from the records it saved there."""
    return (f"ddbench leaderboard --results {out.as_posix()}/{records_file} --out {out.as_posix()}"
            + (f" --report {report}" if report else "") + (f" --lrs-weight {lrs_weight:g}" if lrs_weight != DD_RANKING_WEIGHT else ""))


def pages(rows: list[Row], records: list[dict[str, Any]], regenerate: str, lrs_weight: float = DD_RANKING_WEIGHT) -> dict[str, str]:
    """The Markdown boards of ``rows``: file name (``<task>.md``, ``<task>-common.md``) -> text."""
    return {f"{b.name}.md": markdown(b.task, rows, records, regenerate, b.protocol, lrs_weight) + "\n"
            for b in all_boards(rows, records, lrs_weight)}


def write(records: list[dict[str, Any]], out: Path, tasks: list[str] | None = None, lrs_weight: float = DD_RANKING_WEIGHT) -> list[Path]:
    """Write ``<task>.md``, ``<task>.csv``, ``<task>.png`` (and ``<task>-common.*`` for the common
    protocol) and the records as ``results.json`` under ``out``;
    ``ddbench leaderboard --results OUT/results.json --out OUT`` regenerates them."""
    out.mkdir(parents=True, exist_ok=True)
    records = [r for r in records if tasks is None or r["config"]["task"] in tasks]
    rows = aggregate(records)
    regenerate = regenerate_command(out, lrs_weight=lrs_weight)
    written = []
    for b in all_boards(rows, records, lrs_weight):
        md, csv_path, png = out / f"{b.name}.md", out / f"{b.name}.csv", out / f"{b.name}.png"
        md.write_text(markdown(b.task, rows, records, regenerate, b.protocol, lrs_weight) + "\n")
        csv_path.write_text(to_csv(b.rows, b.extras))
        plot(b, png)
        written += [md, csv_path, png]
    results = out / "results.json"
    results.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    return [*written, results]
