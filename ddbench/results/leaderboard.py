"""Leaderboards from stored records: Markdown (ranked within budget tiers), CSV and a Pareto plot.

Input is a list of stored records (:func:`ddbench.results.store.read_results`). A row aggregates
the distillation seeds of one configuration (:func:`ddbench.results.records.aggregate`): cells that
differ in anything else (distiller, learner or task options, profile, evaluation seeds, time
limit, device type, results version) are separate rows, labelled by what sets them apart. Each
row's metric is ranked in the direction its records state (``higher_is_better``, from the task);
a board's extra columns are the ones its task declares (``leaderboard_columns``) and the run
length (:data:`~ddbench.results.records.RUN_LENGTH_META`); every other extra stays in ``results.json``.
The Markdown depends only on the records, so regenerating from committed results reproduces it
byte for byte. Plugins add their own reports beside these (``ddbench_register_reports``).

A board is one task under one evaluation protocol (docs/design.md §4): ``<task>.md`` for
``native`` (each method's own recipe), ``<task>-common.md`` for ``common`` (the task's one recipe,
stated in its header); a task with both links each to the other and shows them side by side. Each
``full`` row that recorded its evaluation net's parameter count has a ``trained model`` reference
row beside it: full's accuracy at the cost of storing the trained net.
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

from ddbench.results.records import footnote
from ddbench.results.records import shared_timing_note
from ddbench.vocab import protocol_part
from ddbench.vocab import PROTOCOL_FIELDS
from ddbench.vocab import PROTOCOLS
from ddbench.results.records import COLUMNS, Row, aggregate, breakdown, common_settings, fmt
from ddbench.vocab import FULL

CSV_FIELDS = ["task", "distiller", "budget", "metric", "mean", "std", "nets", "seeds", "stored_params", "metric_per_kparam",
              "gain_vs_random", "compression", "distill_s", "eval_s", "peak_mb", "model_params", "device", "status", "label",
              "settings", "higher_is_better", "regime", "reference_regime"]
TRAINED = "trained model"
TEACHER_ROW = "store the teacher"
"""The label of the reference row of a teacher-regime tier: the stored teacher alone, at its parameter count."""
REGIME_TEXT = {"hard": "hard labels", "soft": "soft labels (N x C, charged)", "teacher": "a stored teacher (charged at its parameters)",
               "soft-bank": "a per-view soft-label bank (charged as stored)"}
MARKERS = {"hard": "o", "soft": "s", "teacher": "^", "soft-bank": "D"}  # one plot marker shape per label regime
"""The label of the reference row beside ``full``: the learner trained on all the data, counted at its parameters."""
BREAKDOWN = "stored by tensor"
"""The column of a table whose rows store more than inputs: stored params per tensor (a generator's
or a teacher's weights summed as ``gen``, ``teacher``), as the harness counted them."""
BOARDS = "boards"
"""The name of the generic boards among the reports ``ddbench leaderboard --report`` chooses from."""


def budget_key(budget: str) -> tuple[int, int]:
    """The sort key of a budget text: ``ipc`` before ``params``, then by value (anything else, e.g. ``full``, last)."""
    kind, _, value = budget.partition("=")
    return ({"ipc": 0, "params": 1}.get(kind, 2), int(value) if value.isdigit() else 0)


def direction(rows: Sequence[Row]) -> bool | None:
    """Whether the headline metric of ``rows`` (one task) is higher-is-better, as its records say."""
    return next((d for d in (r.higher_is_better(r.metric) for r in rows if r.metric) if d is not None), None)


def board_columns(rows: Sequence[Row]) -> list[str]:
    """The extra columns of a board: the union of its rows' (sorted)."""
    return sorted({k for r in rows for k in r.board_columns()})


def board_name(task: str, protocol: str = "native") -> str:
    """The file stem of a board: ``<task>`` under ``native``, ``<task>-<protocol>`` otherwise."""
    return task if protocol == "native" else f"{task}-{protocol}"


def boards(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """The (task, protocol) boards of ``rows``, by task, native first."""
    return sorted({(r.task, r.protocol) for r in rows}, key=lambda b: (b[0], PROTOCOLS.index(b[1]) if b[1] in PROTOCOLS else len(PROTOCOLS), b[1]))


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


def tiers(rows: Sequence[Row], higher: bool) -> list[tuple[str, str, list[tuple[str, Row]]]]:
    """The tables of one board (one task under one protocol): ``(budget, regime, [(rank, row)])`` per
    budget tier and label regime, ranked by mean in the metric's direction; the rank is ``1``, ``2``, ...,
    ``—`` for a row without a result and ``ref`` for a reference row (the board's :func:`references_of`
    in the hard regime, :func:`teacher_rows` in the others). A board of ``full`` rows only has one
    tier of its references, budget ``full``. The Markdown and the site show these same tables."""
    references, regimes, out = references_of(rows), regimes_of(rows), []
    for budget in sorted({r.budget for r in rows if r.budget != FULL}, key=budget_key):
        for regime in regimes:
            tier = [r for r in rows if r.budget == budget and r.regime == regime]
            if not tier:
                continue
            ranked = sorted([r for r in tier if r.ok], key=lambda r: (-r.mean if higher else r.mean, r.label))
            lines = [(str(rank), r) for rank, r in enumerate(ranked, 1)] + [("—", r) for r in tier if not r.ok]
            out.append((budget, regime, lines + [("ref", r) for r in (references if regime == "hard" else teacher_rows(tier))]))
    if not any(r.budget != FULL for r in rows) and references:
        out.append((FULL, "hard", [("ref", r) for r in references]))
    return out


def _recipe_text(recipe: dict[str, Any]) -> str:
    return ", ".join(f"`{k}` {v}" for k, v in recipe.items())


def markdown(task: str, rows: list[Row], records: list[dict[str, Any]], regenerate: str, protocol: str = "native") -> str:
    """The leaderboard page of one task under one protocol."""
    all_rows = [r for r in rows if r.task == task]
    both = {r.protocol for r in all_rows}
    rows = [r for r in all_rows if r.protocol == protocol]
    metric = next((r.metric for r in rows if r.metric), "metric")
    declared = direction(rows)
    higher = True if declared is None else declared
    recs = [r for r in records if r["config"]["task"] == task and record_protocol(r) == protocol and r["status"] != "skipped"]
    prov = recs[0]["provenance"] if recs else {}
    finished = sorted(r["finished_at"] for r in recs)
    devices = sorted({r["device"] for r in recs if r["device"]})
    profiles = sorted({r["config"]["profile"] for r in recs})
    eval_seeds = sorted({len(r["config"]["eval_seeds"]) for r in recs})
    common = ", ".join(f"{k}: {v}" for k, v in common_settings(rows).items())
    extras = board_columns(rows)
    how = ("higher" if higher else "lower") + (" is better" if declared is not None else " is better, assumed: the records do not say")
    others = [p for p in PROTOCOLS if p in both and p != protocol]
    links = "".join(f" The {p} protocol's board: [{board_name(task, p)}.md]({board_name(task, p)}.md)." for p in others)
    if protocol == "common":
        used = sorted({json.dumps(protocol_part(r.get("recipe", {}))) for r in recs if r["status"] == "ok"})
        stated = "; ".join(_recipe_text(json.loads(u)) for u in used) or "none recorded"
        how_trained = (f"- Protocol: common: every row trained with the task's one recipe ({stated}), whatever its method "
                       f"declares for {', '.join(f'`{f}`' for f in PROTOCOL_FIELDS)}; a method's other declarations (a learned "
                       f"lr, implied labels, learner options) are part of its artifact and still apply.{links}")
    else:
        how_trained = (f"- Protocol: {protocol}: each row trained with its method's own evaluation recipe (the task's, updated by what "
                       f"the artifact declares), as the papers report; rows may differ in augmentation and epochs, and gain vs random "
                       f"uses each row's recipe.{links}")
    full = [r for r in rows if r.budget == FULL]
    references = references_of(rows)
    trained_note = (f" `{TRAINED}` is the learner trained on the whole train split (`{FULL}`'s {metric}) counted at the parameters "
                    "of its network: what storing the trained model instead of data would cost (a reference, not ranked)."
                    if len(references) > len(full) else "")
    lines = [
        f"# ddbench leaderboard: {task}" + (f" ({protocol} protocol)" if protocol != "native" else ""),
        "",
        f"- Provenance: ddbench {prov.get('ddbench', '?')} (commit {prov.get('commit') or 'unknown'}), torch {prov.get('torch', '?')}, "
        f"Python {prov.get('python', '?')}; device: {', '.join(devices) or '?'}.",
        f"- {len(recs)} cells finished {finished[0] if finished else '?'} to {finished[-1] if finished else '?'}; profile {', '.join(profiles)}; "
        f"{', '.join(map(str, eval_seeds))} evaluation nets per artifact; final-epoch test {metric}, nothing selected on test.",
        f"- Ranked by mean {metric} ({how}) within each budget tier; ± is the std over all "
        f"evaluation nets of all distillation seeds. `{FULL}` is the whole train split (a reference, not ranked); gain vs random = "
        f"metric minus a random real subset at the same budget, seed and evaluation recipe.{trained_note}",
        how_trained,
        f"- Settings: {common or 'none recorded'}; a row that differs says how, in brackets after its distiller.",
        f"- Regenerate: `{regenerate}`",
        "",
    ]
    regimes = regimes_of(rows)
    if regimes != ["hard"] and regimes:
        lines.insert(len(lines) - 2, f"- Label regimes (docs/labels.md): each budget's rows are ranked within their regime; a budget "
                     "bounds the data, and a regime's label storage (soft labels, a teacher, a bank) is charged on top, in stored "
                     "params and per kparam. In the teacher regime, gain vs random is against a random subset with the same "
                     "teacher and recipe; in the soft and soft-bank regimes, which store no teacher to relabel it with, against "
                     f"the hard-label random subset (the CSV's `reference_regime`); `teacher_free` is the {metric} of the same inputs with the hard labels the teacher (soft "
                     f"labels, bank) implies; `{TEACHER_ROW}` is the teacher alone at its parameter count.")
    timing = shared_timing_note(recs)  # cells that shared a device (docs/executors.md)
    if timing:
        lines.insert(len(lines) - 2, timing)
    headers = ["rank", "distiller", f"{metric} ± std", "nets", *[c.header.format(metric=metric) for c in COLUMNS], *extras, "status"]
    notes: dict[str, int] = {}  # a footnote per distinct (distiller, departures): its number
    for budget, regime, ranked in tiers(rows, higher):
        table = [table_line(rank, r, extras) for rank, r in ranked]
        for line, (_, r) in zip(table, ranked):
            if r.deviations:
                key = f"**{r.distiller}**: {footnote(r.deviations)}"
                line[1] += f" [^{notes.setdefault(key, len(notes) + 1)}]"
        heads = headers
        if shows_breakdown([r for _, r in ranked]):
            table = [line[:-1] + [breakdown(r.by_tensor), line[-1]] for line, (_, r) in zip(table, ranked)]
            heads = headers[:-1] + [BREAKDOWN, headers[-1]]
        title = ("## Reference" if budget == FULL else f"## Budget {budget}" +
                 ("" if regimes == ["hard"] else f", {REGIME_TEXT[regime]}"))
        lines += [title, "", tabulate(table, headers=heads, tablefmt="github", disable_numparse=True), ""]
    if notes:
        lines += ["## Departures from the official code", "",
                  "Each marked row was trained under these departures of its method from its authors' official code "
                  "(declared by the method, recorded with each cell; docs/methods.md lists every method's).", "",
                  *[f"[^{n}]: {text}" for text, n in notes.items()], ""]
    if others:
        lines += side_by_side(task, all_rows, metric)
    return "\n".join(lines)


def _unprotocolled(r: Row) -> tuple[str, str, str]:
    config = {k: v for k, v in (r.config or {}).items() if k != "protocol"}
    return r.distiller, r.budget, json.dumps(config, sort_keys=True, default=str)


def side_by_side(task: str, rows: list[Row], metric: str) -> list[str]:
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
        label = (native or common).label  # type: ignore[union-attr]
        change = common.mean - native.mean if native and common else math.nan
        table.append([label, key[1], fmt(native.mean, ".2f") if native else "", fmt(common.mean, ".2f") if common else "",
                      fmt(change, "+.2f")])
    headers = ["distiller", "budget", f"native {metric}", f"common {metric}", "common − native"]
    return ["## Native and common protocols side by side", "",
            f"Mean {metric} of each distiller and budget: native from [{board_name(task, 'native')}.md]({board_name(task, 'native')}.md), "
            f"common from [{board_name(task, 'common')}.md]({board_name(task, 'common')}.md).", "",
            tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), ""]


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


def table_line(rank: str, r: Row, extras: list[str]) -> list[str]:
    """A board's table line: rank, label, mean ± std, nets, the harness columns, ``extras`` and the status."""
    return [rank, r.label or r.distiller, f"{fmt(r.mean, '.2f')} ± {fmt(r.std, '.2f')}" if r.ok else "", str(r.nets),
            *cells(r), *[fmt(r.extra.get(k, math.nan), '.4g') for k in extras], r.status]


def to_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        higher = r.higher_is_better(r.metric) if r.metric else None
        writer.writerow({"task": r.task, "distiller": r.distiller, "label": r.label, "budget": r.budget, "metric": r.metric,
                         "mean": fmt(r.mean, ".6g"), "std": fmt(r.std, ".6g"), "nets": r.nets,
                         "seeds": " ".join(map(str, r.seeds)), **{c.name: fmt(getattr(r, c.name), c.csv_spec) for c in COLUMNS},
                         "device": r.device, "status": r.status, "settings": r.signature or "",
                         "higher_is_better": "" if higher is None else str(higher).lower(), "model_params": fmt(r.model_params, ".0f"),
                         "regime": r.regime, "reference_regime": r.reference_regime})
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


def plot(task: str, rows: list[Row], path: Path, protocol: str = "native") -> None:
    """Metric versus stored parameters (log x) per method, the Pareto front and reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.task == task and r.protocol == protocol and r.ok]
    metric = rows[0].metric if rows else "metric"
    higher = direction(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in sorted({r.label for r in rows if r.budget != FULL}):
        series = [r for r in rows if r.label == name and r.budget != FULL]
        pts = sorted((r.stored_params, r.mean, r.std) for r in series)
        style = dict(linestyle="--", color="gray") if series[0].distiller == "random" else {}
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
    front = pareto([(r.stored_params, r.mean) for r in rows if r.budget != FULL], True if higher is None else higher)
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="red", alpha=0.4, linewidth=4, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("stored parameters (counted by the harness)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"ddbench: {task}" + (f" ({protocol} protocol)" if protocol != "native" else ""))
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def regenerate_command(out: Path, records_file: str = "results.json", report: str | None = None) -> str:
    """The command that rebuilds a board in ``out`` from the records it saved there."""
    return (f"ddbench leaderboard --results {out.as_posix()}/{records_file} --out {out.as_posix()}"
            + (f" --report {report}" if report else ""))


def pages(rows: list[Row], records: list[dict[str, Any]], regenerate: str) -> dict[str, str]:
    """The Markdown boards of ``rows``: file name (``<task>.md``, ``<task>-common.md``) -> text."""
    return {f"{board_name(task, protocol)}.md": markdown(task, rows, records, regenerate, protocol) + "\n"
            for task, protocol in boards(rows)}


def write(records: list[dict[str, Any]], out: Path, tasks: list[str] | None = None) -> list[Path]:
    """Write ``<task>.md``, ``<task>.csv``, ``<task>.png`` (and ``<task>-common.*`` for the common
    protocol) and the records as ``results.json`` under ``out``;
    ``ddbench leaderboard --results OUT/results.json --out OUT`` regenerates them."""
    out.mkdir(parents=True, exist_ok=True)
    records = [r for r in records if tasks is None or r["config"]["task"] in tasks]
    rows = aggregate(records)
    regenerate = regenerate_command(out)
    written = []
    for task, protocol in boards(rows):
        name = board_name(task, protocol)
        md, csv_path, png = out / f"{name}.md", out / f"{name}.csv", out / f"{name}.png"
        md.write_text(markdown(task, rows, records, regenerate, protocol) + "\n")
        csv_path.write_text(to_csv([r for r in rows if r.task == task and r.protocol == protocol]))
        plot(task, rows, png, protocol)
        written += [md, csv_path, png]
    results = out / "results.json"
    results.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    return written + [results]
