"""Results tables: the columns of DESIGN.md's "Scoring" for a list of cell results."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from tabulate import tabulate

from ddbench.harness import CellResult

HEADERS = ["task", "distiller", "budget", "metric", "mean ± std", "stored params", "metric / kparam",
           "gain vs random", "compression", "distill s", "eval s", "peak MB", "status"]


def random_reference(results: Sequence[CellResult]) -> dict[tuple[str, str], float]:
    """Mean metric of the ``random`` baseline per (task, budget), over its seeds."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in results:
        if r.cell.distiller == "random" and r.status == "ok":
            groups.setdefault((r.cell.task, str(r.cell.budget)), []).append(r.mean)
    return {k: statistics.fmean(v) for k, v in groups.items()}


def rows(results: Sequence[CellResult]) -> list[list[object]]:
    ref = random_reference(results)
    out: list[list[object]] = []
    for r in results:
        c = r.cell
        budget = str(c.budget) if c.budget else "(none)"
        if r.status != "ok":
            out.append([c.task, c.distiller, budget, r.metric or "", "", "", "", "", "", "", "", "", f"{r.status}: {r.error}"])
            continue
        gain = r.mean - ref[(c.task, str(c.budget))] if (c.task, str(c.budget)) in ref and c.budget else math.nan
        per_k = r.mean / (r.stored_params / 1000) if r.stored_params else math.nan
        out.append([
            c.task, c.distiller, budget, r.metric, f"{r.mean:.4f} ± {r.std:.4f}", r.stored_params,
            f"{per_k:.4g}", "" if math.isnan(gain) else f"{gain:+.4f}", f"{r.compression:.1f}x",
            f"{r.distill_s:.1f}", f"{r.eval_s:.1f}", f"{r.peak_mb:.0f}", "ok",
        ])
    return out


def table(results: Sequence[CellResult], fmt: str = "github") -> str:
    """A text table of results (failed and skipped cells show their one-line reason)."""
    return tabulate(rows(results), headers=HEADERS, tablefmt=fmt, disable_numparse=True)
