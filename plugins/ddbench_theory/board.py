"""The board of the multi-index memory study: ``multi-index.md``, ``.csv``, ``.png`` and ``.json`` (docs/theory.md §7).

Written by ``ddbench theory-study`` from the per-seed results of :mod:`ddbench_theory.study`;
``--board-only`` rewrites it from the JSON alone, and so does ``ddbench leaderboard``, whose report
``theory-study`` (:data:`REPORT`) it is.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

from tabulate import tabulate

import ddbench_theory.fits as fits
from ddbench.contracts.hookspecs import Report
from ddbench.results.leaderboard import section
from ddbench.results.plotting import figure
from ddbench_theory.fits import Key

NAME = "multi-index"
EPS = "0.05"
SENSITIVITY = "0.02"
COMMAND = "ddbench theory-study --tier cpu --workers 2"

FAILURE_CELL = """\
The cell of the earlier GPU board (he2, d = 256, r = 2, L = 1024, n = 471,859, M1 = r^2, M2 = L,
H100) scored R^2 0.247 against a teacher at 0.995, with stage 1 sound (alignments >= 0.99). Rerun
on the CPU with that board's code at the same n, it scores 0.966: the S2 system at M2 = L with
lambda = 1e-6 has a condition number near 1e11, so the student's head amplifies the precision of
its S2 features (0.845 with fp32 or fp64 features, -32.4 with inputs rounded as TF32 rounds them, at
n = 18,000), and a GPU product at TF32-like precision explains the failure. The learner now
computes the S2 features and head in fp64, and stage 2 minimises the learner's ridge objective
(with J alone the student at M2 = L overfit: 0.876 against 0.945 at M2 = L/2 for d = 32, r = 2,
L = 256). Details and the two regression tests: docs/theory.md §4.2."""


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _fmt(x: float | None, spec: str = ".0f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def groups(results: list[dict[str, Any]], eps: str, field: str = "budget") -> fits.Groups:
    """B* (or another field of the search) per configuration, one entry per seed."""
    out: fits.Groups = {}
    for res in results:
        c = res["config"]
        out.setdefault(Key(c["link"], c["d"], c["r"], c["width"]), []).append(res["b_star"][eps][field])
    return out


def _range(values: list[float | None]) -> str:
    reached = [v for v in values if v is not None]
    miss = len(values) - len(reached)
    text = f"{min(reached):.0f}–{max(reached):.0f}" if reached else "—"
    return text + (f" ({miss} of {len(values)} not reached)" if miss else "")


def config_table(results: list[dict[str, Any]]) -> list[list[Any]]:
    by: dict[Key, list[dict[str, Any]]] = {}
    for res in results:
        c = res["config"]
        by.setdefault(Key(c["link"], c["d"], c["r"], c["width"]), []).append(res)
    rows = []
    for key, grp in sorted(by.items(), key=lambda kv: (kv[0].link != "he2", kv[0].link, kv[0].d, kv[0].r, kv[0].width)):
        b = [g["b_star"][EPS]["budget"] for g in grp]
        b2 = [g["b_star"][SENSITIVITY]["budget"] for g in grp]
        grid = [g["b_star"][EPS]["grid_budget"] for g in grp]
        rand = [g["b_star"][EPS]["random_budget"] for g in grp]
        rand_at = [g["b_star"][EPS]["random_r2_at_bstar"] for g in grp if g["b_star"][EPS]["random_r2_at_bstar"] is not None]
        med = fits.median(b)
        theory = key.r**2 * key.d + key.width
        spec = [g["at_spec"]["r2"] for g in grp if g["at_spec"]]
        full = statistics.fmean(g["full_data"] for g in grp)
        rand_med = fits.median(rand)
        rows.append([key.link, key.d, key.r, key.width, len(grp), f"{statistics.fmean(g['n'] for g in grp):.0f}",
                     _fmt(_median([g["teacher_r2"] for g in grp]), ".3f"), _fmt(_median(spec), ".3f"),
                     _fmt(med), _range(b), _fmt(fits.median(grid)), _fmt(fits.median(b2)), _range(b2), theory,
                     _fmt(None if med is None else med / theory, ".2f"),
                     _fmt(rand_med) if rand_med is not None else f"not reached within n(d+1) = {full:.0f}",
                     _fmt(_median(rand_at), ".3f"), f"{full:.0f}", key.width * (key.d + 2) + key.d + 1])
    return rows


HEADERS = ["link", "d", "r", "L", "seeds", "n", "teacher R^2", "R^2 at M1=r^2, M2=L", "B*(0.05)", "seed range",
           "grid B*(0.05)", "B*(0.02)", "seed range (0.02)", "r^2 d + L", "B* / (r^2 d + L)",
           "random subset: smallest budget reaching the target", "random subset R^2 at B*", "n(d+1)", "store the model"]


def _ci(samples: list[dict], name: str, spec: str = ".2f") -> str:
    ci = fits.interval(samples, name)
    return "—" if ci is None else f"[{ci[0]:{spec}}, {ci[1]:{spec}}]"


def _slopes(points: dict[Key, float], axis: str) -> dict[str, float]:
    """The measured slopes of log B* along ``axis``, keyed by text (what a bootstrap resample gives)."""
    return {str(k): v for k, v in fits.slopes(points, axis).items()}


def fit_lines(results: list[dict[str, Any]], eps: str) -> tuple[list[str], dict[str, Any]]:
    """The fits at ``eps`` (link he2), with intervals, as Markdown lines, and the point estimates."""
    g = {k: v for k, v in groups(results, eps).items() if k.link == "he2"}
    points = fits.medians(g)
    power, two = fits.power_law(points), fits.two_term(points)
    nd = fits.one_term(points, lambda k: _full(results, k))
    theory = fits.one_term(points, lambda k: k.r**2 * k.d + k.width)
    if not power or not two or not nd:
        return ["- Too few configurations reached the target for a fit."], {}
    boot_power = fits.bootstrap(g, lambda p: fits.power_law(p) or {})
    boot_two = fits.bootstrap(g, lambda p: fits.two_term(p) or {})
    inside = {"d": _contains(boot_power, "s_d", 1.0), "r": _contains(boot_power, "s_r", 2.0)}
    total_hits = total_groups = 0
    lines = [
        (f"- {len(points)} configurations with a median (of {len(g)}), medians over seeds; intervals: 95 % bootstrap over "
        f"seeds ({fits.BOOTSTRAP} resamples)."),
        (f"- Power law log B* = c + s_d log d + s_r log r + s_L log L: s_d = {power['s_d']:.2f} {_ci(boot_power, 's_d')}, "
        f"s_r = {power['s_r']:.2f} {_ci(boot_power, 's_r')}, s_L = {power['s_L']:.2f} {_ci(boot_power, 's_L')}; "
        f"R^2 in log space {power['r2_log']:.3f}. The pure r^2 d term predicts s_d = 1 ({'inside' if inside['d'] else 'outside'} "
        f"the interval) and s_r = 2 ({'inside' if inside['r'] else 'outside'})."),
        (f"- Two-term NNLS B* = c1 r^2 d + c2 L: c1 = {two['c1']:.3f} {_ci(boot_two, 'c1', '.3f')}, c2 = {two['c2']:.3f} "
        f"{_ci(boot_two, 'c2', '.3f')}; R^2 {two['r2']:.3f} {_ci(boot_two, 'r2', '.3f')}, largest relative error "
        f"{two['max_rel_err']:.2f}."),
        f"- For contrast, one term: B* = c n(d+1) has R^2 {nd['r2']:.3f}" + (f"; B* = c (r^2 d + L) has c = {theory['c']:.3f}, "
                                                                            f"R^2 {theory['r2']:.3f}." if theory else "."),
    ]
    for axis, label in (("d", "d (fixed r, L)"), ("r", "r (fixed d, L)"), ("width", "L (fixed d, r)")):
        lines += ["", f"Slope of log B* in {label}: measured with its interval, beside the slope that the fitted two-term "
                      "model has over the same configurations" + (" and the pure-term prediction." if axis != "width" else "."), ""]
        measured = fits.slopes(points, axis)
        boot = fits.bootstrap(g, functools.partial(_slopes, axis=axis))
        rows = []
        hits = 0
        for grp, value in measured.items():
            keys = [k for k in points if (k.link, *(getattr(k, o) for o in _others(axis))) == grp]
            implied = fits.implied_slope(keys, axis, two["c1"], two["c2"])
            ci = fits.interval(boot, str(grp))
            hit = ci is not None and ci[0] <= implied <= ci[1]
            hits += hit
            rows.append([", ".join(f"{o}={v}" for o, v in zip(_others(axis), grp[1:])).replace("width", "L"),
                         len(keys), f"{value:.2f}", "—" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]",
                         f"{implied:.2f}", "yes" if hit else "no", {"d": "1", "r": "2", "width": "additive"}[axis]])
        if axis != "width":
            total_hits, total_groups = total_hits + hits, total_groups + len(rows)
        if rows:
            lines.append(tabulate(rows, headers=["group", "configs", "slope", "95 % interval", "two-term model's slope",
                                                 "model inside interval", "pure-term prediction"],
                                  tablefmt="github", disable_numparse=True))
            lines += ["", f"The two-term model's slope lies inside the interval in {hits} of {len(rows)} groups."]
        else:
            lines.append("No group has two values of this axis with a median.")
    return lines, {"power": power, "two": two, "nd": nd, "inside": inside, "boot_power": boot_power, "boot_two": boot_two,
                   "hits": total_hits, "groups": total_groups}


def _contains(samples: list[dict], name: str, value: float) -> bool:
    ci = fits.interval(samples, name)
    return ci is not None and ci[0] <= value <= ci[1]


def _others(axis: str) -> tuple[str, str]:
    return {"d": ("r", "width"), "r": ("d", "width"), "width": ("d", "r")}[axis]


def _full(results: list[dict[str, Any]], key: Key) -> float:
    return statistics.fmean(r["full_data"] for r in results if Key(r["config"]["link"], r["config"]["d"], r["config"]["r"],
                                                                      r["config"]["width"]) == key)


def monotonicity(results: list[dict[str, Any]]) -> list[str]:
    """How often R^2 fell as M2 grew at fixed M1 among the evaluated points."""
    lines = []
    for eps in (EPS, SENSITIVITY):
        cells = [(r, v) for r in results for v in r["b_star"][eps]["violations"]]
        pairs = {(json.dumps(r["config"], sort_keys=True), v["m1"]) for r, v in cells}
        searched = sum(len({m1 for m1 in r["stage1"] if r["stage1"][m1] is not None}) for r in results)
        worst = max(cells, key=lambda rv: rv[1]["r2_pass"] - rv[1]["r2_fail"], default=None)  # the largest drop
        text = (f"- eps = {eps}: {len(pairs)} of {searched} (configuration, seed, M1) searches have a pair M2 < M2' where M2 "
                f"reaches the target and M2' does not ({len(cells)} pairs)")
        if worst:
            r, v = worst
            c = r["config"]
            text += (f"; the largest drop: {c['link']} d={c['d']} r={c['r']} L={c['width']} seed {c['seed']}, M1={v['m1']}: "
                     f"R^2 {v['r2_pass']:.4f} at M2={v['m2_pass']}, {v['r2_fail']:.4f} at M2={v['m2_fail']} "
                     f"(target {r['b_star'][eps]['target']:.4f})")
        lines.append(text + ".")
    return lines


def closing_note(info: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """Two sentences on what the study says about the paper's claim, from the numbers."""
    if not info:
        return "Too few configurations reached the target to say anything about the claim."
    power, two, nd = info["power"], info["two"], info["nd"]
    he2 = [r for r in results if r["config"]["link"] == "he2" and r["b_star"][EPS]["budget"]]
    ratios = [r["b_star"][EPS]["budget"] / r["theory"] for r in he2]
    full = max(r["full_data"] / r["b_star"][EPS]["budget"] for r in he2)
    m1_by_r = _medians_by(he2, "r", "m1")
    m2_by_l = _medians_by(he2, "width", "m2")
    stage1 = statistics.median(r["b_star"][EPS]["m1"] * (r["config"]["d"] + 1) / r["b_star"][EPS]["budget"] for r in he2)
    boot = info["boot_power"]

    def slope(name: str) -> str:
        ci = fits.interval(boot, name)
        return f"{power[name]:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

    def where(ok: bool) -> str:
        return "inside" if ok else "outside"

    c2 = fits.interval(info["boot_two"], "c2")
    tiers = "/".join(sorted({r["tier"] for r in results}))
    return (f"On the {tiers} tier B*(0.05) grows like d^{slope('s_d')} r^{slope('s_r')} L^{slope('s_L')} (95 % bootstrap "
            f"intervals over seeds): the predicted slope 1 in d is {where(info['inside']['d'])} its interval, the predicted "
            f"slope 2 in r is {where(info['inside']['r'])} it, and the two-term fit is {two['c1']:.2f} r^2 d + {two['c2']:.2f} L"
            + (f" (c2 in [{c2[0]:.2f}, {c2[1]:.2f}])" if c2 else "") + f" with R^2 {two['r2']:.2f}, against {nd['r2']:.2f} for "
            f"c n(d+1). B* lies between {min(ratios):.2f} and {max(ratios):.2f} times r^2 d + L per seed and up to {full:.0f} "
            f"times below the full data; the median M1 at B* is {_listing(m1_by_r, 'r')} and the median M2 is "
            f"{_listing(m2_by_l, 'L')}, so stage 1's M1 (d + 1) is a median {100 * stage1:.0f} % of B* and stage 2 reaches "
            "the target with far fewer than L points.")


def _medians_by(rows: list[dict[str, Any]], axis: str, field: str) -> dict[int, float]:
    values: dict[int, list[int]] = {}
    for r in rows:
        values.setdefault(r["config"][axis], []).append(r["b_star"][EPS][field])
    return {k: statistics.median(v) for k, v in sorted(values.items())}


def _listing(medians: dict[int, float], axis: str) -> str:
    return ", ".join(f"{v:g}" for v in medians.values()) + f" for {axis} = " + ", ".join(str(k) for k in medians)


def markdown(payload: dict[str, Any]) -> str:
    results = payload["results"]
    prov = payload.get("provenance", {})
    devices = sorted({r["device"] for r in results})
    tiers = sorted({r["tier"] for r in results})
    settings = results[0]["settings"] if results else {}
    facts = [
        (f"- Provenance: ddbench {prov.get('ddbench', '?')} (commit {prov.get('commit') or 'unknown'}), torch "
        f"{prov.get('torch', '?')}; device: {', '.join(devices)}; tier {', '.join(tiers)} "
        f"(n = 4 d^2 r capped at {settings.get('n_cap')}, n_test {settings.get('n_test')}, K1 = {settings.get('steps1')}, "
        f"K2 = {settings.get('steps2')} Adam steps after the closed-form stage-2 labels); {len(results)} configurations x seeds."),
        f"- Run: `{COMMAND}` (cache under .ddbench/theory-study; `--board-only` rewrites this page from "
        f"{NAME}.json). Evaluating every cell took {sum(r['compute_s'] for r in results) / 60:.0f} min of process time "
        f"({sum(r['evaluations'] for r in results)} cells, summed over the worker processes)"
        + (f"; this run took {payload['wall_s'] / 60:.1f} min wall and evaluated {sum(r['fresh'] for r in results)} of them "
           "(the rest from the cache)." if payload.get("wall_s") is not None else "."),
        ("- Method (docs/theory.md §4, §7): the `two-stage` distiller's artifact, trained by the `two-layer` learner in artifact "
        "mode at the seed's theta0, test R^2 on fresh inputs with noise-free targets; the budget is the harness's count of "
        "every stored scalar. Target: R^2(teacher) - eps, the teacher being the same learner on all n real points at the "
        "same theta0. B*: for each M1 in {r, 2r, r^2, 2r^2, 4r^2}, the smallest M2 in [1, L] reaching the target by "
        "bisection started from the grid {L/4, L/2, L}, to 1 % of the budget; B* is the smallest over M1. "
        "**Grid B*** is the old answer from the grid alone."),
        ("- Random reference: the first m points of one seeded permutation of the train split, trained by the same learner with "
        "its ridge lambda chosen on the validation split (never test), bisected over m to 5 %; its budget is m(d+1)."),
    ]
    fit05, info = fit_lines(results, EPS)
    sections = [
        ("title", "# ddbench leaderboard: multi-index (the memory of two-stage distillation, B* by search)"),
        ("facts", "\n".join(facts)),
        ("configurations", section("## B* per configuration (medians over seeds)",
                                   tabulate(config_table(results), headers=HEADERS, tablefmt="github", disable_numparse=True))),
        ("fits", section("## Fits at eps = 0.05 (link he2)", "\n".join(fit05))),
        ("sensitivity", section("## Sensitivity: the same fits at eps = 0.02 (link he2)", "\n".join(fit_lines(results, SENSITIVITY)[0]))),
        ("monotonicity", section("## Is R^2 monotone in M2? (what the bisection assumes)", "\n".join(monotonicity(results)))),
        ("failure cell", section("## The failure cell of the earlier board", FAILURE_CELL)),
        ("plot", f"![B* against r^2 d + L]({NAME}.png)"),
        ("closing note", section("## Closing note", closing_note(info, results))),
    ]
    return "\n\n".join(text for _, text in sections) + "\n"


def to_csv(results: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    fields = ["link", "d", "r", "L", "seed", "n", "teacher_r2", "eps", "b_star", "b_star_lower", "m1", "m2", "r2_at_b_star",
              "grid_b_star", "random_b_star", "random_r2_at_b_star", "theory", "full_data", "violations", "evaluations"]
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    for r in results:
        c = r["config"]
        for eps, b in sorted(r["b_star"].items()):
            writer.writerow([c["link"], c["d"], c["r"], c["width"], c["seed"], r["n"], f"{r['teacher_r2']:.6g}", eps,
                             b["budget"], b["lower"], b["m1"], b["m2"], "" if b["r2"] is None else f"{b['r2']:.6g}",
                             b["grid_budget"], b["random_budget"],
                             "" if b["random_r2_at_bstar"] is None else f"{b['random_r2_at_bstar']:.6g}",
                             r["theory"], r["full_data"], len(b["violations"]), r["evaluations"]])
    return buf.getvalue()


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """B* (median, bars: seed range) against r^2 d + L, log-log, with the random subset's budget and n(d+1)."""
    markers = {"he2": "o", "he2+he3": "s", "degenerate": "^"}
    colors = {64: "tab:blue", 256: "tab:orange", 1024: "tab:green", 4096: "tab:red", 8192: "tab:purple"}
    g = groups(results, EPS)
    rand = groups(results, EPS, "random_budget")
    seen: set[str] = set()
    with figure(path, 110, figsize=(7.5, 5.5)) as (_, ax):
        for key, values in sorted(g.items(), key=lambda kv: (kv[0].link, kv[0].width)):
            med = fits.median(values)
            x = key.r**2 * key.d + key.width
            label = f"{key.link}, L={key.width}"
            if med is not None:
                reached = [v for v in values if v is not None]
                ax.errorbar([x], [med], yerr=[[med - min(reached)], [max(reached) - med]], fmt=markers.get(key.link, "o"),
                            color=colors.get(key.width, "k"), capsize=2, label=None if label in seen else label)
                seen.add(label)
            rmed = fits.median(rand[key])
            if rmed is not None:
                ax.plot([x], [rmed], markers.get(key.link, "o"), mfc="none", color=colors.get(key.width, "k"), alpha=0.6,
                        label=None if "random" in seen else "random subset (hollow)")
                seen.add("random")
        xs = sorted({k.r**2 * k.d + k.width for k in g})
        if xs:
            ax.plot(xs, xs, "k--", lw=0.8, label="B* = r^2 d + L")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("r^2 d + L")
        ax.set_ylabel("stored scalars to reach R^2(teacher) - 0.05")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        ax.set_title("ddbench multi-index: B* (median, bars = seed range) and the random subset", fontsize=10)


def write(results: list[dict[str, Any]] | dict[str, Any], out: Path, elapsed: float | None = None) -> list[Path]:
    """Write the board's Markdown, CSV, plot and JSON under ``out``; ``results`` is the study's list or a saved JSON."""
    from ddbench.results.provenance import provenance

    payload: dict[str, Any] = results if isinstance(results, dict) else {"results": results, "wall_s": elapsed, "provenance": provenance()}
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{NAME}.md", out / f"{NAME}.csv", out / f"{NAME}.png", out / f"{NAME}.json"]
    paths[0].write_text(markdown(payload))
    paths[1].write_text(to_csv(payload["results"]))
    plot(payload["results"], paths[2])
    paths[3].write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return paths


def rewrite(records: list[dict[str, Any]], out: Path) -> list[Path]:
    """The ``theory-study`` report of ``ddbench leaderboard``: the board rewritten from the study's results
    saved in ``out`` (``multi-index.json``); nothing where ``out`` holds none. The suite records are not its input."""
    path = out / f"{NAME}.json"
    return write(json.loads(path.read_text()), out) if path.is_file() else []


REPORT = Report("theory-study", rewrite, f"the multi-index memory study's board, rewritten from OUT/{NAME}.json (docs/theory.md §7)")
