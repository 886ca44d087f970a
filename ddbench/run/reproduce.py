"""``ddbench reproduce METHOD``: run a method's published configuration and write a certificate page.

A distiller declares its published accuracies (:attr:`ddbench.contracts.interfaces.Distiller.published`,
docs/methods.md §11) and a task the dataset its numbers compare with
(:attr:`~ddbench.contracts.interfaces.Task.reference_dataset`). The command picks the first dataset whose
task loads (the full dataset where its files are present, else a task that holds part of it, such
as ``mnist5k`` for MNIST), runs the method at the published ipcs with the full profile (the
published hyperparameters and evaluation recipe), and writes a page: the published accuracy and
gap over random beside the measured ones, the iterations run, the device, the time and a verdict.
A published row made on ZCA-whitened inputs (:attr:`~ddbench.contracts.interfaces.Published.zca`) runs on
the task with option ``zca=true`` where the task has it, and the page says which rows did.
On a CPU the distillation is cut to ``--iterations`` and only ipc 1 runs unless ``--ipc`` says
otherwise (the page says so); on a GPU it runs at ipc 1 and 10 at the published length.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddbench.contracts.interfaces import Published
from ddbench.errors import DDBenchError, SuiteError, TaskDataError
from ddbench.plugins import PluginManager, options_of, parse_named
from ddbench.results.provenance import provenance
from ddbench.run.suite import DistillerEntry, Suite, TaskEntry, load_task
from ddbench.vocab import Budget

CPU_ITERATIONS = 5
"""Outer iterations of a reproduction on a CPU unless ``--iterations`` says otherwise: enough to
run every stage of the method end to end in minutes, far from the published length."""
EVAL_SEEDS = 5  # evaluation nets per artifact (the papers use 100, DM 25)


@dataclass
class Line:
    """One ipc of a certificate: what was published, what was measured."""

    published: Published
    mean: float = math.nan
    std: float = math.nan
    nets: int = 0
    random: float = math.nan
    iterations: float = math.nan
    distill_s: float = math.nan
    eval_s: float = math.nan
    status: str = "missing"
    error: str = ""
    resumed_from: int = 0  # the iteration its distillation resumed at from a checkpoint (0: one uninterrupted run)

    @property
    def gap(self) -> float:
        return self.mean - self.random

    @property
    def verdict(self) -> str:
        if self.status != "ok":
            return f"{self.status}: {self.error}" if self.error else self.status
        off = self.mean - self.published.accuracy
        if abs(off) <= self.published.std:
            return "within the published std"
        return f"outside: {off:+.2f} points from the published mean, {abs(off) - self.published.std:.2f} past its std"


def datasets(rows: Iterable[Published]) -> list[str]:
    """The datasets of ``rows``, in their first-appearance order."""
    return list(dict.fromkeys(r.dataset for r in rows))


def pick_task(manager: PluginManager, method: str, task: str | None) -> tuple[str, str]:
    """(task name, dataset) to reproduce ``method`` on: ``task`` if given, else the first published
    dataset with a loadable task named after it, else the first task that holds part of one."""
    rows = manager.distillers.get(method).published
    if not rows:
        raise SuiteError(f"distiller {method!r} declares no published results to reproduce (its class attribute `published`).")
    wanted = datasets(rows)
    tasks = {name: manager.tasks.get(name).reference_dataset for name in manager.tasks.names()}
    if task is not None:
        dataset = tasks.get(task) if task in tasks else manager.tasks.get(task).reference_dataset
        if dataset not in wanted:
            raise SuiteError(f"task {task!r} compares with no dataset {method!r} published ({', '.join(wanted)}): "
                             f"use one of {', '.join(n for n, d in tasks.items() if d in wanted) or '(none installed)'}.")
        return task, dataset
    exact = [(d, d) for d in wanted if tasks.get(d) == d]
    partial = [(n, d) for d in wanted for n, ds in sorted(tasks.items()) if ds == d and n != d]
    reasons = []
    for name, dataset in exact + partial:
        try:
            load_task(manager, name, {}, "full", "cpu")
        except TaskDataError as exc:
            reasons.append(f"{name}: {exc}")
            continue
        return name, dataset
    raise SuiteError(f"no task for {method!r}'s published datasets ({', '.join(wanted)}) loads here "
                     f"({'; '.join(reasons) or 'none installed'}): give --data-root with the files, or --download.")


def task_options(manager: PluginManager, task: str, row: Published) -> dict[str, Any]:
    """The options of ``task`` that reproduce ``row``: ``zca=true`` where the published run whitened
    its inputs and the task has that option (docs/methods.md §1), else none."""
    return {"zca": True} if row.zca and "zca" in options_of(manager.tasks.get(task)) else {}


def suite_for(manager: PluginManager, method: str, task: str, dataset: str, ipcs: Sequence[int],
              iterations: int | None, eval_seeds: int, seed: int, method_options: dict[str, Any] | None = None,
              profile: str = "full", given_task_options: dict[str, Any] | None = None, threads: int | None = None) -> Suite:
    """The suite of a reproduction: ``method`` (with ``method_options``) at each published ``ipc`` on
    ``task`` (with ``given_task_options``), in ``profile`` (``full``: the published sizes and recipe),
    each cell with ``threads`` torch threads (None: the run's default, 1); one task entry per set of
    task options (the ipcs published on ZCA inputs apart)."""
    cls = manager.distillers.get(method)
    published = {r.ipc: r for r in cls.published if r.dataset == dataset}
    missing = sorted(set(ipcs) - set(published))
    if missing:
        raise SuiteError(f"{method!r} published no result at ipc {', '.join(map(str, missing))} on {dataset}: "
                         f"use --ipc {' / '.join(map(str, sorted(published)))}.")
    options: dict[str, Any] = dict(method_options or {})
    if iterations is not None:
        if "iterations" not in options_of(cls):
            raise SuiteError(f"distiller {method!r} has no `iterations` option, so --iterations cannot shorten it: leave it out.")
        options["iterations"] = iterations
    entries: dict[bool, TaskEntry] = {}
    for ipc in ipcs:
        task_opts = task_options(manager, task, published[ipc])
        entries.setdefault(bool(task_opts), TaskEntry(task, [], {**(given_task_options or {}), **task_opts})).budgets.append(
            Budget("ipc", ipc))
    return Suite(f"reproduce-{method}-{task}", list(entries.values()),
                 [DistillerEntry(method, options)], profile=profile, eval_seeds=eval_seeds, distill_seeds=[seed], threads=threads)


def lines(rows: Iterable[Published], dataset: str, ipcs: Sequence[int], records: Sequence[dict[str, Any]]) -> list[Line]:
    """One :class:`Line` per ipc: the published row and the record of that budget."""
    by_budget = {rec["config"]["budget"]: rec for rec in records}
    out = []
    for row in sorted((r for r in rows if r.dataset == dataset and r.ipc in ipcs), key=lambda r: r.ipc):
        line = Line(row)
        rec = by_budget.get(f"ipc={row.ipc}")
        if rec is not None:
            line.status, line.error = rec["status"], rec.get("error", "")
            if rec["status"] == "ok":
                values = rec["values"]
                line.mean, line.nets = statistics.fmean(values), len(values)
                line.std = statistics.pstdev(values) if len(values) > 1 else 0.0
                line.random = math.nan if rec.get("random_ref") is None else rec["random_ref"]
                line.iterations = rec.get("extra", {}).get("iterations", math.nan)
                line.distill_s, line.eval_s = rec["distill_s"], rec["eval_s"]
                line.resumed_from = int(rec.get("resumed_from") or 0)
        out.append(line)
    return out


def zca_note(manager: PluginManager, task: str, found: Sequence[Line]) -> str | None:
    """The page's line on ZCA: which published rows whitened their inputs and whether these runs do."""
    whitened = [ln.published for ln in found if ln.published.zca]
    if not whitened:
        return None
    others = [str(ln.published.ipc) for ln in found if not ln.published.zca]
    note = f"- **ZCA**: the published numbers at ipc {' / '.join(str(r.ipc) for r in whitened)} were made on ZCA-whitened inputs"
    if task_options(manager, task, whitened[0]):
        note += (f"; so are these runs and their measured random (`{task}:zca=true`, the map fitted on the train split "
                 "less its validation slice; docs/methods.md §1)")
    else:
        note += f"; the task `{task}` has no `zca` option, so these runs use its normalisation: a different preprocessing"
    return note + (f". Ipc {' / '.join(others)}: the task's normalisation, as published." if others else ".")


def _f(x: float, spec: str = ".1f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def page(method: str, task: str, dataset: str, found: list[Line], records: Sequence[dict[str, Any]],
         default_iterations: int | None, command: str, manager: PluginManager) -> str:
    """The certificate page in Markdown."""
    rec = next((r for r in records if r["status"] == "ok"), records[0] if records else None)
    device = rec.get("device", "?") if rec else "?"
    threads = f", {rec['threads']} torch thread(s) per cell" if rec and rec.get("threads") else ""
    ran = rec["config"]["distiller_options"].get("iterations") if rec else None
    reduced = ran is not None and default_iterations is not None and ran < default_iterations
    now = provenance(manager)
    prov = (rec or {}).get("provenance") or now  # the cells' own: a reused cell ran at an earlier commit
    written = f" This page was written at commit {now['commit']}." if now.get("commit") not in (None, prov.get("commit")) else ""
    out = [f"# Reproduction: {method} on {task}", ""]
    out.append(f"- Provenance: the cells ran on ddbench {prov['ddbench']} (commit {prov.get('commit') or 'unknown'}), "
               f"torch {prov['torch']}, Python {prov['python']}; device: {device}{threads}.{written}")
    out.append(f"- Published numbers: {found[0].published.source}. They are test accuracies (%) over the papers' "
               f"evaluation nets; here {found[0].nets or EVAL_SEEDS} nets per artifact, final epoch, nothing selected on test.")
    if task != dataset:
        out.append(f"- The task `{task}` holds only part of {dataset} ({manager.tasks.get(task).description}); the "
                   f"published numbers, made on the whole dataset, are a reference here, not a target.")
    if rec is not None and rec["config"].get("profile") == "quick":
        out.append("- **Quick profile** (`--profile quick`): CPU sizes and recipe, not the published configuration: a smoke test "
                   "of the command, whose verdicts say nothing about the method.")
    given = {k: v for k, v in rec["config"]["task_options"].items() if k != "zca"} if rec else {}
    if given:
        out.append(f"- **Task options** {', '.join(f'{k}={v}' for k, v in sorted(given.items()))} (`--task`): not the published "
                   "configuration, so the verdicts are indicative only.")
    if reduced:
        out.append(f"- **Reduced length**: {ran} of the published {default_iterations} iterations (`--iterations`), so the "
                   "verdicts are indicative only; run it on a GPU at the full length for a certificate.")
    else:
        out.append("- Length: the method's published number of iterations.")
    for ln in found:
        if ln.resumed_from:
            out.append(f"- **Resumed**: the ipc {ln.published.ipc} distillation was stopped and resumed from its checkpoint at "
                       f"iteration {ln.resumed_from}; its distill s counts the final run only.")
    zca = zca_note(manager, task, found)
    if zca:
        out.append(zca)
    out.append("- Measured random: the harness's random real subset at the same budget, seed and evaluation recipe; "
               "gap = accuracy − random. Verdict: the measured mean within the published std of the published mean, "
               "or outside by how many points.")
    out.append(f"- Regenerate: `{command}`")
    out += ["", ("| ipc | published | published random | published gap | measured | measured random | measured gap "
                 "| nets | iterations | distill s | eval s | verdict |"),
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for ln in found:
        p = ln.published
        out.append(f"| {p.ipc} | {p.accuracy:.1f} ± {p.std:.1f} | {p.random:.1f} ± {p.random_std:.1f} | {p.gap:+.1f} "
                   f"| {_f(ln.mean, '.2f')} ± {_f(ln.std, '.2f')} | {_f(ln.random, '.2f')} | {_f(ln.gap, '+.2f')} | {ln.nets} "
                   f"| {_f(ln.iterations, '.0f')} | {_f(ln.distill_s)} | {_f(ln.eval_s)} | {ln.verdict} |")
    return "\n".join(out) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", metavar="METHOD[:k=v,...]",
                        help="a distiller that declares published results (dc, dsa, dm, mtt), with options to change")
    parser.add_argument("--task", metavar="NAME[:k=v,...]",
                        help="the task to run on, with options (default: the first published dataset that loads, else a part of one)")
    parser.add_argument("--ipc", type=int, action="append", default=[], metavar="N",
                        help="published ipc(s) to run (default: 1 and 10 on CUDA, 1 on CPU)")
    parser.add_argument("--iterations", type=int, metavar="N",
                        help=f"the distiller's iterations (default: published on CUDA, {CPU_ITERATIONS} on CPU)")
    parser.add_argument("--eval-seeds", type=int, default=EVAL_SEEDS, metavar="K",
                        help=f"evaluation nets per artifact (default {EVAL_SEEDS})")
    parser.add_argument("--seed", type=int, default=0, help="the distillation seed (default 0)")
    parser.add_argument("--profile", choices=["full", "quick"], default="full",
                        help="full: the published sizes and recipe (default); quick: CPU sizes, a smoke test of the command")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch CPU threads the cell computes with (default 1); recorded with the result")
    parser.add_argument("--store", help="results store (default .ddbench/reproduce.sqlite); finished cells are reused")
    parser.add_argument("--out", default="leaderboards/reproduce", help="folder of the page (default leaderboards/reproduce)")
    parser.add_argument("--data-root", help="folder holding the datasets' files (or $DDBENCH_DATA_ROOT; default ~/.ddbench/data)")
    parser.add_argument("--download", action="store_true", help="download missing datasets' official archives (checked, resumed)")


def run(args: argparse.Namespace, manager: PluginManager, execute: Any) -> int:
    """The ``reproduce`` subcommand; ``execute(suite, store, device)`` runs a suite into a store and
    returns the records of its cells (the command line's own run loop)."""
    from ddbench.ops.device import resolve_device
    from ddbench.run.suite import check_eval_seeds, check_seed, check_threads

    check_eval_seeds(args.eval_seeds, "--eval-seeds")
    check_seed(args.seed, "--seed")
    if args.threads is not None:
        check_threads(args.threads, "--threads")
    if args.iterations is not None and args.iterations < 1:
        raise SuiteError(f"--iterations must be a positive integer (got {args.iterations}).")
    device = resolve_device(args.device)
    method, method_options = parse_named(args.method)
    task_name, task_opts = parse_named(args.task) if args.task else (None, {})
    task, dataset = pick_task(manager, method, task_name)
    ipcs = args.ipc or ([1, 10] if device.type == "cuda" else [1])
    iterations = args.iterations
    if iterations is None and device.type != "cuda" and "iterations" not in method_options:
        iterations = CPU_ITERATIONS
    suite = suite_for(manager, method, task, dataset, ipcs, iterations, args.eval_seeds, args.seed, method_options, args.profile,
                      task_opts, args.threads)
    records = execute(suite, args.store or ".ddbench/reproduce.sqlite", args.device)
    if records is None:  # interrupted: the finished cells are in the store
        return 130
    cls = manager.distillers.get(method)
    found = lines(cls.published, dataset, ipcs, records)
    command = " ".join(["ddbench reproduce", args.method, "--task", args.task or task, *[f"--ipc {i}" for i in ipcs],
                        *([f"--iterations {iterations}"] if iterations is not None else []), f"--eval-seeds {args.eval_seeds}",
                        *([f"--profile {args.profile}"] if args.profile != "full" else []), f"--device {device.type}",
                        *([f"--threads {args.threads}"] if args.threads is not None else [])])
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DDBenchError(f"--out {args.out!r} cannot be created ({exc.strerror}): give a writable folder.") from None
    path = out / f"{method}-{task}.md"
    path.write_text(page(method, task, dataset, found, records, options_of(cls).get("iterations"), command, manager))
    (out / f"{method}-{task}.json").write_text(json.dumps(records, indent=1, sort_keys=True, default=str) + "\n")
    print(path)
    return 0 if all(ln.status == "ok" for ln in found) else 1
