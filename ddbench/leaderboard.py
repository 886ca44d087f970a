"""Leaderboards from stored results: Markdown (ranked within budget tiers), CSV and a Pareto plot.

Input is a list of stored records (``ResultStore.records()`` or an exported ``results.json``).
A row aggregates the distillation seeds of one configuration: cells that differ in anything else
(distiller, learner or task options, profile, evaluation seeds, time limit, device type, results
version) are separate rows, labelled by what sets them apart (:func:`label_rows`). The Markdown
depends only on the records, so regenerating from committed results reproduces it byte for byte.
"""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from ddbench.errors import StoreError
from ddbench.store import check_record

HIGHER_IS_BETTER = {"accuracy": True, "r2": True, "mse": False, "gain_vs_random": True, "metric_per_kparam": True,
                    "stored_params": False, "distill_s": False, "eval_s": False, "peak_mb": False, "compression": True}
CSV_FIELDS = ["task", "distiller", "budget", "metric", "mean", "std", "nets", "seeds", "stored_params", "metric_per_kparam",
              "gain_vs_random", "compression", "distill_s", "eval_s", "peak_mb", "device", "status", "label", "settings"]
IDENTITY = ("task", "distiller", "budget", "seed")
"""Config keys that name a row; every other key of a cell's config is a setting that keeps rows apart."""


@dataclass
class Row:
    """One (task, distiller, budget) aggregated over distillation seeds."""

    task: str
    distiller: str
    budget: str
    metric: str = ""
    values: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    stored_params: float = math.nan
    gain_vs_random: float = math.nan
    compression: float = math.nan
    distill_s: float = math.nan
    eval_s: float = math.nan
    peak_mb: float = math.nan
    device: str = ""
    failed: list[str] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] | None = None  # the settings every cell of the row shares (None: unknown, e.g. an old CSV)
    label: str = ""  # the distiller and what sets this row apart on its board (label_rows)

    @property
    def signature(self) -> str | None:
        return None if self.config is None else json.dumps(self.config, sort_keys=True, default=str)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.pstdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def metric_per_kparam(self) -> float:
        return self.mean / (self.stored_params / 1000) if self.stored_params else math.nan

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


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.fmean(xs) if xs else math.nan


def read_results(path: Path) -> list[dict[str, Any]]:
    """The records of an exported ``results.json`` (as :func:`write` saves them)."""
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{str(path)!r} is not a readable results.json ({type(exc).__name__}): "
                         "pass one written by `ddbench leaderboard`.") from exc
    if not isinstance(records, list):
        raise StoreError(f"{str(path)!r} holds no list of result records: pass a results.json written by `ddbench leaderboard`.")
    return [check_record(r, f"record #{i + 1} of {str(path)!r}") for i, r in enumerate(records)]


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a cell's config: everything but the row's name (task, distiller, budget) and its seed."""
    return {k: v for k, v in config.items() if k not in IDENTITY}


def aggregate(records: list[dict[str, Any]]) -> list[Row]:
    """Group stored cells by (task, distiller, budget, settings); skipped cells are left out."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for rec in records:
        if rec["status"] == "skipped":
            continue
        c = rec["config"]
        groups.setdefault((c["task"], c["distiller"], c["budget"] or "full",
                           json.dumps(settings(c), sort_keys=True, default=str)), []).append(rec)
    rows = []
    for (task, distiller, budget, _), recs in groups.items():
        ok = [r for r in recs if r["status"] == "ok"]
        row = Row(task, distiller, budget, failed=[r["error"] for r in recs if r["status"] != "ok"],
                  config=settings(recs[0]["config"]))
        if ok:
            row.metric = ok[0]["metric"]
            row.values = [v for r in ok for v in r["values"]]
            row.seeds = sorted(r["config"]["seed"] for r in ok)
            row.stored_params = _mean([r["stored_params"] for r in ok])
            row.gain_vs_random = _mean([statistics.fmean(r["values"]) - r["random_ref"] for r in ok if r.get("random_ref") is not None])
            row.compression = _mean([r["compression"] for r in ok])
            row.distill_s, row.eval_s = _mean([r["distill_s"] for r in ok]), _mean([r["eval_s"] for r in ok])
            row.peak_mb = max(r["peak_mb"] for r in ok)
            row.device = ok[0]["device"]
            keys = sorted({k for r in ok for k in r["extra"]})
            row.extra = {k: _mean([r["extra"].get(k, math.nan) for r in ok]) for k in keys}
        rows.append(row)
    label_rows(rows)
    return sorted(rows, key=lambda r: (r.task, r.budget, r.label))


def _flat(config: dict[str, Any]) -> dict[str, str]:
    """A row's settings as short ``name: value`` texts (distiller options apart: see :func:`label_rows`)."""
    out = {}
    for key, value in sorted(config.items()):
        if key == "distiller_options":
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


def common_settings(rows: list[Row]) -> dict[str, str]:
    """Each setting's most common value over ``rows`` (ties: the first in sorted order)."""
    counts: dict[str, Counter[str]] = {}
    for r in rows:
        if r.config is not None:
            for k, v in _flat(r.config).items():
                counts.setdefault(k, Counter())[v] += 1
    return {k: min(c, key=lambda v: (-c[v], v)) for k, c in sorted(counts.items())}


def label_rows(rows: list[Row]) -> None:
    """Set each row's label: its distiller, the options given to it, and (in brackets) the settings
    in which it differs from most rows of its task's board, e.g. ``dsa (lr_img=10) [time limit: 30 s]``."""
    for task in {r.task for r in rows}:
        board = [r for r in rows if r.task == task]
        common = common_settings(board)
        for r in board:
            if r.config is None:
                r.label = r.label or r.distiller
                continue
            options = ", ".join(f"{k}={_text(v)}" for k, v in sorted(r.config.get("distiller_options", {}).items()))
            flat = _flat(r.config)
            differs = ", ".join(f"{k}: {flat.get(k, 'unset')}" for k in sorted({*flat, *common}) if flat.get(k) != common.get(k))
            r.label = r.distiller + (f" ({options})" if options else "") + (f" [{differs}]" if differs else "")


def _fmt(x: float, spec: str) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _budget_key(budget: str) -> tuple[int, int]:
    kind, _, value = budget.partition("=")
    return ({"ipc": 0, "params": 1}.get(kind, 2), int(value) if value.isdigit() else 0)


def markdown(task: str, rows: list[Row], records: list[dict[str, Any]], regenerate: str) -> str:
    """The leaderboard page of one task."""
    rows = [r for r in rows if r.task == task]
    metric = next((r.metric for r in rows if r.metric), "metric")
    higher = HIGHER_IS_BETTER.get(metric, True)
    recs = [r for r in records if r["config"]["task"] == task and r["status"] != "skipped"]
    prov = recs[0]["provenance"] if recs else {}
    finished = sorted(r["finished_at"] for r in recs)
    devices = sorted({r["device"] for r in recs if r["device"]})
    profiles = sorted({r["config"]["profile"] for r in recs})
    eval_seeds = sorted({len(r["config"]["eval_seeds"]) for r in recs})
    common = ", ".join(f"{k}: {v}" for k, v in common_settings(rows).items())
    extras = sorted({k for r in rows for k in r.extra})
    lines = [
        f"# ddbench leaderboard: {task}",
        "",
        f"- Provenance: ddbench {prov.get('ddbench', '?')} (commit {prov.get('commit') or 'unknown'}), torch {prov.get('torch', '?')}, "
        f"Python {prov.get('python', '?')}; device: {', '.join(devices) or '?'}.",
        f"- {len(recs)} cells finished {finished[0] if finished else '?'} to {finished[-1] if finished else '?'}; profile {', '.join(profiles)}; "
        f"{', '.join(map(str, eval_seeds))} evaluation nets per artifact; final-epoch test {metric}, nothing selected on test.",
        f"- Ranked by mean {metric} ({'higher' if higher else 'lower'} is better) within each budget tier; ± is the std over all "
        "evaluation nets of all distillation seeds. `full` is the whole train split (a reference, not ranked); gain vs random = "
        "metric minus a random real subset at the same budget, seed and evaluation recipe.",
        f"- Settings: {common or 'none recorded'}; a row that differs says how, in brackets after its distiller.",
        f"- Regenerate: `{regenerate}`",
        "",
    ]
    headers = ["rank", "distiller", f"{metric} ± std", "nets", "stored params", f"{metric} / kparam", "gain vs random",
               "compression", "distill s", "eval s", "peak MB", *extras, "status"]
    full = [r for r in rows if r.budget == "full"]
    for budget in sorted({r.budget for r in rows if r.budget != "full"}, key=_budget_key):
        tier = [r for r in rows if r.budget == budget]
        ranked = sorted([r for r in tier if r.values], key=lambda r: (-r.mean if higher else r.mean, r.label))
        table = []
        for rank, r in enumerate(ranked, 1):
            table.append(_line(str(rank), r, extras))
        table += [_line("—", r, extras) for r in tier if not r.values]
        table += [_line("ref", r, extras) for r in full]
        lines += [f"## Budget {budget}", "", tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), ""]
    if not any(r.budget != "full" for r in rows) and full:
        lines += ["## Reference", "", tabulate([_line("ref", r, extras) for r in full], headers=headers, tablefmt="github", disable_numparse=True), ""]
    return "\n".join(lines)


def _line(rank: str, r: Row, extras: list[str]) -> list[str]:
    return [rank, r.label or r.distiller, f"{_fmt(r.mean, '.2f')} ± {_fmt(r.std, '.2f')}" if r.values else "", str(len(r.values)),
            _fmt(r.stored_params, '.0f'), _fmt(r.metric_per_kparam, '.4g'), _fmt(r.gain_vs_random, '+.2f'),
            _fmt(r.compression, '.1f') + ("x" if r.values else ""), _fmt(r.distill_s, '.1f'), _fmt(r.eval_s, '.1f'),
            _fmt(r.peak_mb, '.0f'), *[_fmt(r.extra.get(k, math.nan), '.4g') for k in extras], r.status]


def to_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({"task": r.task, "distiller": r.distiller, "label": r.label, "budget": r.budget, "metric": r.metric,
                         "mean": _fmt(r.mean, ".6g"), "std": _fmt(r.std, ".6g"), "nets": len(r.values),
                         "seeds": " ".join(map(str, r.seeds)), "stored_params": _fmt(r.stored_params, ".0f"),
                         "metric_per_kparam": _fmt(r.metric_per_kparam, ".6g"), "gain_vs_random": _fmt(r.gain_vs_random, ".6g"),
                         "compression": _fmt(r.compression, ".6g"), "distill_s": _fmt(r.distill_s, ".4g"),
                         "eval_s": _fmt(r.eval_s, ".4g"), "peak_mb": _fmt(r.peak_mb, ".4g"), "device": r.device, "status": r.status,
                         "settings": r.signature or ""})
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


def plot(task: str, rows: list[Row], path: Path) -> None:
    """Metric versus stored parameters (log x) per method, the Pareto front and reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.task == task and r.values]
    metric = rows[0].metric if rows else "metric"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in sorted({r.label for r in rows if r.budget != "full"}):
        series = [r for r in rows if r.label == name and r.budget != "full"]
        pts = sorted((r.stored_params, r.mean, r.std) for r in series)
        style = dict(linestyle="--", color="gray") if series[0].distiller == "random" else {}
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=name, **style)
    for r in rows:
        if r.budget == "full":
            ax.axhline(r.mean, color="black", linestyle=":", label=f"{r.label}: whole train split ({r.stored_params:.0f} params)")
            ax.plot([r.stored_params], [r.mean], marker="*", markersize=12, color="black", linestyle="none")
    front = pareto([(r.stored_params, r.mean) for r in rows if r.budget != "full"], HIGHER_IS_BETTER.get(metric, True))
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="red", alpha=0.4, linewidth=4, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("stored parameters (counted by the harness)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"ddbench: {task}")
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(records: list[dict[str, Any]], out: Path, tasks: list[str] | None = None) -> list[Path]:
    """Write ``<task>.md``, ``<task>.csv``, ``<task>.png`` and the records as ``results.json``
    under ``out``; ``ddbench leaderboard --results OUT/results.json --out OUT`` regenerates them."""
    out.mkdir(parents=True, exist_ok=True)
    records = [r for r in records if tasks is None or r["config"]["task"] in tasks]
    rows = aggregate(records)
    regenerate = f"ddbench leaderboard --results {out.as_posix()}/results.json --out {out.as_posix()}"
    written = []
    for task in sorted({r.task for r in rows}):
        md, csv_path, png = out / f"{task}.md", out / f"{task}.csv", out / f"{task}.png"
        md.write_text(markdown(task, rows, records, regenerate) + "\n")
        csv_path.write_text(to_csv([r for r in rows if r.task == task]))
        plot(task, rows, png)
        written += [md, csv_path, png]
    results = out / "results.json"
    results.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    return written + [results]
