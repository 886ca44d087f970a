"""Results tables: the columns of DESIGN.md's "Scoring" for a list of cell results."""
from __future__ import annotations

import math
from collections.abc import Sequence

from tabulate import tabulate

from ddbench.harness import CellResult

HEADERS = ["task", "distiller", "budget", "metric", "mean ± std", "stored params", "metric / kparam",
           "gain vs random", "compression", "distill s", "eval s", "peak MB", "status"]


def rows(results: Sequence[CellResult]) -> list[list[object]]:
    out: list[list[object]] = []
    for r in results:
        c = r.cell
        budget = str(c.budget) if c.budget else "(none)"
        if r.status != "ok":
            out.append([c.task, c.distiller, budget, r.metric or "", "", "", "", "", "", "", "", "", f"{r.status}: {r.error}"])
            continue
        per_k = r.mean / (r.stored_params / 1000) if r.stored_params else math.nan
        out.append([
            c.task, c.distiller, budget, r.metric, f"{r.mean:.2f} ± {r.std:.2f}", r.stored_params,
            f"{per_k:.4g}", "" if r.gain is None else f"{r.gain:+.2f}", f"{r.compression:.1f}x",
            f"{r.distill_s:.1f}", f"{r.eval_s:.1f}", f"{r.peak_mb:.0f}", "ok",
        ])
    return out


def table(results: Sequence[CellResult], fmt: str = "github") -> str:
    """A text table of results (failed and skipped cells show their one-line reason)."""
    return tabulate(rows(results), headers=HEADERS, tablefmt=fmt, disable_numparse=True)
