"""The scaling study of the two-stage distiller: B*(eps), its fits in d, r and L, the leaderboard and plot.

docs/theory.md §7, claim 2: B*(eps) is the smallest counted budget on the (M1, M2) grid whose
student reaches R^2 >= R^2(teacher) - eps, the teacher being the full-data learner at the same
theta0 (per-cell metric ``teacher_r2``). Fits: log B* = c + s_d log d + s_r log r + s_L log L
(least squares) and B* = c1 r^2 d + c2 L (non-negative least squares), beside the one-term model
B* = c n (d + 1) that the claim rules out.

The study is the report ``multi-index-scaling`` of ``ddbench leaderboard`` (registered through
``ddbench_register_reports``); it writes ``multi-index-scaling.md``, ``multi-index-scaling.csv``,
``multi-index-scaling.png`` and the records it used as ``multi-index-scaling.json`` under
``--out``, and writes nothing for records without a grid (no configuration at two sizes)::

    ddbench leaderboard --store .ddbench/scaling-cpu.sqlite [--store MORE.sqlite] --out leaderboards --report multi-index-scaling
    ddbench leaderboard --results leaderboards/multi-index-scaling.json --out leaderboards --report multi-index-scaling

``ddbench theory-scaling`` (``ddbench_register_commands``) prints the study for another ``--eps``
without writing anything.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tabulate import tabulate

from ddbench.errors import StoreError
from ddbench.hookspecs import Command, Report
from ddbench.results.leaderboard import regenerate_command
from ddbench.results.store import read_all

EPS = 0.05  # docs/theory.md §7, claim 2
NAME = "multi-index-scaling"  # the report's name and its files' stem
SUITES = "leaderboards/suites/multi-index-scaling.toml (CPU), leaderboards/suites/multi-index-scaling-gpu.toml (GPU)"


@dataclass(frozen=True)
class Point:
    """One two-stage cell of the study."""

    d: int
    r: int
    L: int
    link: str
    seed: int
    n: int
    m1: int
    m2: int
    stored: int
    r2: float
    teacher_r2: float
    random_equal_r2: float
    random_features_r2: float
    alignment: float
    subspace_overlap: float
    w1_alignment: float
    mismatch: float
    distill_s: float
    peak_mb: float
    device: str


@dataclass(frozen=True)
class BStar:
    """B*(eps) of one (d, r, L, link, seed) configuration (None: not reached on the grid)."""

    d: int
    r: int
    L: int
    link: str
    seed: int
    n: int
    b_star: int | None
    teacher_r2: float
    best_r2: float
    grid_max: int
    random_best_r2: float
    device: str

    @property
    def theory(self) -> int:
        return self.r**2 * self.d + self.L

    @property
    def full_data(self) -> int:
        return self.n * (self.d + 1)


def points(records: list[dict[str, Any]]) -> list[Point]:
    """The finished two-stage multi-index cells that carry the per-cell references, one per
    (configuration, seed, M1, M2): sizes such as ``r`` and ``r^2`` coincide at r = 1."""
    out: dict[tuple, Point] = {}
    for rec in sorted(records, key=lambda rec: rec["key"]):
        c, x = rec["config"], rec.get("extra", {})
        if c["task"] != "multi-index" or c["distiller"] != "two-stage" or rec["status"] != "ok" or "n_train" not in x:
            continue
        opts = c["task_options"]
        d, r = int(opts.get("d", 32)), int(opts.get("r", 2))
        p = Point(d, r, int(c["learner_options"].get("width", 256)), str(opts.get("link", "he2")), int(opts.get("seed", 0)),
                  int(x["n_train"]), int(x["m1"]), int(x["m2"]), int(rec["stored_params"]),
                  statistics.fmean(rec["values"]), x["teacher_r2"], x["random_equal_r2"], x["random_features_r2"],
                  x["alignment"], x["subspace_overlap"], x["w1_alignment"], x["stage1_mismatch"], rec["distill_s"],
                  rec["peak_mb"], rec["device"])
        out.setdefault((p.d, p.r, p.L, p.link, p.seed, p.m1, p.m2), p)
    return list(out.values())


def b_stars(pts: list[Point], eps: float = EPS) -> list[BStar]:
    """B*(eps) per configuration, with the best equal-budget random subset seen on its grid."""
    groups: dict[tuple, list[Point]] = {}
    for p in pts:
        groups.setdefault((p.d, p.r, p.L, p.link, p.seed), []).append(p)
    out = []
    for (d, r, L, link, seed), grp in sorted(groups.items()):
        teacher = grp[0].teacher_r2
        reached = [p.stored for p in grp if p.r2 >= teacher - eps]
        out.append(BStar(d, r, L, link, seed, grp[0].n, min(reached) if reached else None, teacher, max(p.r2 for p in grp),
                         max(p.stored for p in grp), max(p.random_equal_r2 for p in grp), grp[0].device))
    return out


def power_fit(rows: list[BStar]) -> dict[str, float] | None:
    """log B* = c + s_d log d + s_r log r + s_L log L by least squares over the axes that vary."""
    rows = [b for b in rows if b.b_star is not None]
    axes = [name for name in ("d", "r", "L") if len({getattr(b, name) for b in rows}) > 1]
    if len(rows) <= len(axes) + 1 or not axes:
        return None
    design = np.array([[1.0] + [math.log(getattr(b, a)) for a in axes] for b in rows])
    target = np.log([b.b_star for b in rows])
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    resid = target - design @ coef
    return {**{f"slope_{a}": float(c) for a, c in zip(axes, coef[1:])}, "r2_log": _r2(target, resid), "points": len(rows)}


def two_term_fit(rows: list[BStar]) -> dict[str, float] | None:
    """B* = c1 r^2 d + c2 L by non-negative least squares (two unknowns: the active-set cases by hand),
    beside the one-term model B* = c n (d + 1)."""
    rows = [b for b in rows if b.b_star is not None]
    if len(rows) < 3:
        return None
    y = np.array([b.b_star for b in rows], dtype=float)
    features = np.array([[b.r**2 * b.d, b.L] for b in rows], dtype=float)
    candidates = []
    for cols in ([0, 1], [0], [1]):
        coef, *_ = np.linalg.lstsq(features[:, cols], y, rcond=None)
        if (coef >= 0).all():
            full = np.zeros(2)
            full[cols] = coef
            candidates.append(full)
    c = min(candidates, key=lambda k: float(((y - features @ k) ** 2).sum()))
    nd = np.array([[b.full_data] for b in rows], dtype=float)
    c_nd, *_ = np.linalg.lstsq(nd, y, rcond=None)
    rel = np.abs(features @ c - y) / y
    return {"c1": float(c[0]), "c2": float(c[1]), "r2": _r2(y, y - features @ c), "max_rel_err": float(rel.max()),
            "r2_nd": _r2(y, y - nd @ c_nd), "points": len(rows)}


def _r2(y: np.ndarray, resid: np.ndarray) -> float:
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float((resid**2).sum()) / total if total > 0 else float("nan")


def _median(values: list[int | None]) -> float | None:
    return None if not values or any(v is None for v in values) else float(statistics.median(values))  # type: ignore[arg-type]


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def per_config(rows: list[BStar]) -> list[dict[str, Any]]:
    """B* aggregated over seeds (median; None when a seed did not reach the target)."""
    groups: dict[tuple, list[BStar]] = {}
    for b in rows:
        groups.setdefault((b.link, b.d, b.r, b.L), []).append(b)
    out = []
    for (link, d, r, L), grp in sorted(groups.items()):
        out.append({"link": link, "d": d, "r": r, "L": L, "seeds": len(grp), "b_star": _median([b.b_star for b in grp]),
                    "per_seed": [b.b_star for b in grp], "theory": r * r * d + L, "full_data": statistics.fmean(b.full_data for b in grp),
                    "teacher_r2": statistics.fmean(b.teacher_r2 for b in grp), "best_r2": statistics.fmean(b.best_r2 for b in grp),
                    "random_best_r2": statistics.fmean(b.random_best_r2 for b in grp), "grid_max": max(b.grid_max for b in grp)})
    return out


def headline(pts: list[Point]) -> list[list[str]]:
    """Per configuration at the spec's sizes M1 = r^2, M2 = L: the student beside its references."""
    table = []
    keys = sorted({(p.link, p.d, p.r, p.L) for p in pts})
    for link, d, r, L in keys:
        grp = [p for p in pts if (p.link, p.d, p.r, p.L) == (link, d, r, L) and p.m1 == r * r and p.m2 == L]
        if not grp:
            continue

        def mean(attr: str) -> float:
            return statistics.fmean(getattr(p, attr) for p in grp)

        n = statistics.fmean(p.n for p in grp)
        table.append([link, d, r, L, len(grp), _fmt(mean("r2")), _fmt(mean("teacher_r2")), _fmt(mean("teacher_r2")),
                      _fmt(mean("random_equal_r2")), _fmt(mean("random_features_r2")), f"{mean('stored'):.0f}", r * r * d + L,
                      L * (d + 2) + d + 1, f"{n * (d + 1):.0f}", _fmt(mean("alignment")), _fmt(mean("subspace_overlap")),
                      _fmt(mean("w1_alignment")), _fmt(mean("mismatch")), _fmt(mean("distill_s"), ".1f"), _fmt(mean("peak_mb"), ".0f")])
    return table


def markdown(records: list[dict[str, Any]], pts: list[Point], eps: float, regenerate: str) -> str:
    rows = b_stars(pts, eps)
    configs = per_config(rows)
    he2 = [b for b in rows if b.link == "he2"]
    power, two = power_fit(he2), two_term_fit(he2)
    devices = sorted({p.device for p in pts})
    profiles = sorted({r["config"]["profile"] for r in records if r["config"]["distiller"] == "two-stage"})
    provs = [r["provenance"] for r in records if "provenance" in r]
    prov = provs[0] if provs else {}
    commits = sorted({p.get("commit") or "unknown" for p in provs}) or ["unknown"]
    torches = sorted({p.get("torch", "?") for p in provs}) or ["?"]
    lines = [
        "# ddbench leaderboard: multi-index (two-layer theory, scaling study)",
        "",
        f"- Provenance: ddbench {prov.get('ddbench', '?')} (commit {', '.join(commits)}), torch {', '.join(torches)}; "
        f"device: {', '.join(devices) or '?'}; profile {', '.join(profiles) or '?'}; {len(pts)} two-stage cells.",
        f"- Suites: {SUITES}. Regenerate: `{regenerate}`",
        "- Method: `two-stage` (docs/theory.md §4, a reconstruction): M1 gradient-matched points in R^d + one direction with "
        "M2 positions and labels + alpha, beta. Test R^2 on fresh Gaussian inputs with noise-free targets (n_test = 2e4 quick, 1e5 full).",
        "- References, all at the student's theta0 (fixed-init protocol) and computed per cell by the task: **teacher** = the "
        "learner on all n real points (stores n(d+1)); **store the model** = W1, b, a, alpha, beta of the teacher (same R^2 as the "
        "teacher, stores L(d+2)+d+1); **random subset** = floor(B/(d+1)) real points at the artifact's counted budget B, 5 draws; "
        "**random features** = no first-layer step, ridge on all n points.",
        "",
        "## Student and references at M1 = r^2, M2 = L (mean over seeds)",
        "",
        "At r = 1, M1 = r^2 = 1 is too few: one point gates only one side of the ReLUs, while the target's first-layer "
        "gradient is odd in w_j^T u; two points (+-u) suffice, see B* below (M1 = 2r^2 = 2).",
        "",
        tabulate(headline(pts), headers=["link", "d", "r", "L", "seeds", "two-stage R^2", "teacher R^2", "store-model R^2",
                                         "random subset R^2 (same B)", "random features R^2", "stored (counted)", "r^2 d + L",
                                         "store-model scalars", "full data n(d+1)", "alignment", "subspace overlap",
                                         "W1 alignment", "stage-1 D (1 - cos)", "distill s", "peak MB"],
                 tablefmt="github", disable_numparse=True),
        "",
        f"## B*(eps = {eps}): smallest counted budget on the (M1, M2) grid with R^2 >= R^2(teacher) - eps",
        "",
        "M1 in {r, r^2, 2r^2, 4r^2} (CPU; GPU {r^2, 2r^2}), M2 in {L/4, L/2, L}. Median over seeds; — = some seed did not "
        "reach the target within the grid. The random subset never gets more than the grid's largest budget here; its best R^2 "
        "on the grid is shown (target = teacher R^2 - eps).",
        "",
        tabulate([[c["link"], c["d"], c["r"], c["L"], c["seeds"], _fmt(c["b_star"], ".0f"),
                   " ".join("—" if v is None else str(v) for v in c["per_seed"]), c["theory"],
                   _fmt(None if c["b_star"] is None else c["b_star"] / c["theory"], ".2f"), f"{c['full_data']:.0f}",
                   _fmt(c["teacher_r2"]), _fmt(c["best_r2"]), _fmt(c["random_best_r2"]),
                   "yes" if c["random_best_r2"] >= c["teacher_r2"] - eps else f"not reached within {c['grid_max']}"] for c in configs],
                 headers=["link", "d", "r", "L", "seeds", "B*", "B* per seed", "r^2 d + L", "B* / (r^2 d + L)", "n(d+1)",
                          "teacher R^2", "best two-stage R^2", "best random-subset R^2", "random subset reaches target"],
                 tablefmt="github", disable_numparse=True),
        "",
        "## Fits (link he2, every configuration and seed that reached the target)",
        "",
    ]
    if power:
        slopes = ", ".join(f"{k.removeprefix('slope_')}: {v:.2f}" for k, v in power.items() if k.startswith("slope_"))
        lines.append(f"- log B* = c + s_d log d + s_r log r + s_L log L: slopes {slopes} (R^2 in log space {power['r2_log']:.3f}, "
                     f"{power['points']} points). Prediction: s_d ~ 1, s_r ~ 2 when r^2 d dominates; additive in L.")
    if two:
        lines.append(f"- NNLS B* = c1 r^2 d + c2 L: c1 = {two['c1']:.3f}, c2 = {two['c2']:.3f}, R^2 = {two['r2']:.3f}, max relative "
                     f"error {two['max_rel_err']:.2f} ({two['points']} points). One-term model B* = c n(d+1): R^2 = {two['r2_nd']:.3f}.")
    if not (power or two):
        lines.append("- Too few configurations reached the target for a fit.")
    lines += ["", "![B* against d and r](multi-index-scaling.png)", "", "## Closing note", "", closing_note(configs, power, two, devices)]
    return "\n".join(lines) + "\n"


def closing_note(configs: list[dict[str, Any]], power: dict | None, two: dict | None, devices: list[str]) -> str:
    """The fitted growth in d and r, stated from the numbers."""
    if not power and not two:
        return "Not enough configurations reached the target to state a growth rate."
    parts = []
    if power:
        parts.append("B* grows like " + " · ".join(f"{k.removeprefix('slope_')}^{v:.2f}" for k, v in power.items() if k.startswith("slope_"))
                     + f" (log-log least squares, R^2 {power['r2_log']:.2f})")
    if two:
        parts.append(f"the two-term model {two['c1']:.2f}·r^2 d + {two['c2']:.2f}·L explains it with R^2 {two['r2']:.2f} against "
                     f"{two['r2_nd']:.2f} for c·n(d+1)")
    he2 = [c for c in configs if c["link"] == "he2" and c["b_star"] is not None]
    ratio = max(c["full_data"] / c["b_star"] for c in he2) if he2 else float("nan")
    tier = "GPU and CPU" if any(dev != "cpu" for dev in devices) else "CPU only (d <= 32, L <= 256: two points per axis, so the slopes are coarse)"
    return (f"On {tier}: " + "; ".join(parts) + f". The full training set stores up to {ratio:.0f}x more scalars than B*, "
            "and B* does not follow n(d+1) ~ d^3 r. The (M1, M2) grid is coarse (B* moves in steps of about M1(d+1) and 2 M2), "
            + ("so the exponents are indicative." if any(dev != "cpu" for dev in devices)
               else "so the exponents are indicative until the GPU tier adds d up to 1024 and L up to 4096."))


def plot(pts: list[Point], eps: float, path: Path) -> None:
    """B* against d (left) and r (right), log-log, with r^2 d + L and the full data n(d+1) for scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = [c for c in per_config(b_stars(pts, eps)) if c["link"] == "he2"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, axis, other in ((axes[0], "d", "r"), (axes[1], "r", "d")):
        for key in sorted({(c[other], c["L"]) for c in configs}):
            line = sorted((c for c in configs if (c[other], c["L"]) == key), key=lambda c: c[axis])
            xs = [c[axis] for c in line]
            (h,) = ax.plot(xs, [c["b_star"] if c["b_star"] is not None else math.nan for c in line], marker="o",
                           label=f"B*, {other}={key[0]}, L={key[1]}")
            ax.plot(xs, [c["theory"] for c in line], linestyle="--", color=h.get_color(), alpha=0.6)
            ax.plot(xs, [c["full_data"] for c in line], linestyle=":", color=h.get_color(), alpha=0.6)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(axis)
        ax.set_ylabel(f"stored scalars to reach R^2(teacher) - {eps}")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"B* against {axis} (dashed: r^2 d + L; dotted: n(d+1))", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle("ddbench multi-index: memory of the two-stage distilled set (link he2)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_csv(pts: list[Point], eps: float) -> str:
    rows = b_stars(pts, eps)
    buf = io.StringIO()
    fields = [*Point.__dataclass_fields__, "target_reached"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    targets = {(b.d, b.r, b.L, b.link, b.seed): b.teacher_r2 - eps for b in rows}
    for p in sorted(pts, key=lambda p: (p.link, p.d, p.r, p.L, p.seed, p.stored)):
        row = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(p).items()}
        writer.writerow({**row, "target_reached": p.r2 >= targets[(p.d, p.r, p.L, p.link, p.seed)]})
    return buf.getvalue()


def is_grid(pts: list[Point]) -> bool:
    """Whether ``pts`` make a study: some configuration at two or more (M1, M2) sizes."""
    sizes: dict[tuple, set[tuple[int, int]]] = {}
    for p in pts:
        sizes.setdefault((p.d, p.r, p.L, p.link, p.seed), set()).add((p.m1, p.m2))
    return any(len(s) > 1 for s in sizes.values())


def write(records: list[dict[str, Any]], out: Path, eps: float = EPS) -> list[Path]:
    """Write the study's Markdown, CSV, plot and records under ``out`` (nothing when the records hold no grid)."""
    pts = points(records)
    if not is_grid(pts):
        return []
    out.mkdir(parents=True, exist_ok=True)
    records = sorted((r for r in records if r["config"]["task"] == "multi-index"), key=lambda r: r["key"])
    paths = [out / f"{NAME}.md", out / f"{NAME}.csv", out / f"{NAME}.png", out / f"{NAME}.json"]
    paths[0].write_text(markdown(records, pts, eps, regenerate_command(out, paths[3].name, NAME)))
    paths[1].write_text(to_csv(pts, eps))
    plot(pts, eps, paths[2])
    paths[3].write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    return paths


REPORT = Report(NAME, write, "the two-stage scaling study: B*(eps), its fits in d, r and L, a plot (docs/theory.md §7)")


# -- ddbench theory-scaling ----------------------------------------------------------------------
def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", action="append", default=[], help="results store(s) of the scaling suites")
    parser.add_argument("--results", action="append", default=[], help="exported multi-index-scaling.json file(s)")
    parser.add_argument("--eps", type=float, default=EPS, help=f"target gap to the teacher's R^2 (default {EPS})")


def run(args: argparse.Namespace) -> int:
    """Print the study of the given results at ``--eps`` (the board itself is ``ddbench leaderboard``'s)."""
    records = read_all(args.store, args.results).require_records()
    pts = points(records)
    if not pts:
        raise StoreError("no finished two-stage multi-index cells in the given results: run the scaling suite first "
                         "(leaderboards/suites/multi-index-scaling.toml).")
    records = sorted((r for r in records if r["config"]["task"] == "multi-index"), key=lambda r: r["key"])
    print(markdown(records, pts, args.eps, "ddbench leaderboard --store STORE --out DIR --report " + NAME), end="")
    return 0


COMMAND = Command("theory-scaling", "print the multi-index scaling study (B*, fits) of stored results", run, arguments,
                  "Print the two-stage scaling study of stored results at a chosen eps; nothing is written "
                  f"(ddbench leaderboard --report {NAME} writes the board).")
