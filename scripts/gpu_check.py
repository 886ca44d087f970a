"""The prepared GPU check: every GPU figure ddbench still lacks, measured in one go on one GPU.

    python scripts/gpu_check.py --out DIR            # on a machine with CUDA, under 10 minutes
    python scripts/gpu_check.py --out DIR --dry-run  # every step on CPU at the tiniest sizes

GPU time is scarce (minutes, on a bare machine), so the check runs as one script with a time budget
per step and a deadline for the whole (``--total-s``, default 540 s). The steps, in order: the
environment (device, driver, torch, CUDA, cuDNN, ddbench and its commit); the default suite on CUDA
(every distiller, both protocols); ``ensemble-speed`` at K = 10 against sequential training;
``gradmatch-timing`` of dc, dsa and dm at ipc 1 and 10 against the per-class reference loop;
``mtt-memory`` against syn_steps; ``theory-measure`` at d = 1024, L = 8192, n = 10⁶; the Ray
executor with ``--gpus-per-cell 0.25``; and the dc, dsa, dm and mtt reproductions on mnist5k at
the published length, as far as the time left allows.

Each step runs in a child process forked from this one (which has imported ddbench and its
plugins, and never touches CUDA itself), so a step that fails, crashes or runs past its budget
(its process group is killed) is recorded as such and the next one runs. Into ``--out`` go one
JSON file per step (``steps/NN-name.json``: the exact command, status, seconds, budget, and its
figures: the stores' rows, the commands' tables, theory-measure's JSON, the reproduction pages),
each step's stdout and stderr beside it, the stores (``stores/``), the reproduction pages
(``reproduce/``), ``gpu-check.json`` (every step so far) and ``summary.md`` (the device, the
versions, a table of the steps and each step's command and figures), the last two rewritten after
every step so that a check cut short still leaves what it measured. Exit status: 0 when every step
finished, 1 when one failed, ran out of time or was not run, 2 for bad input (no CUDA without
``--dry-run``, ``--out`` a file, ddbench's plugins not installed).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

TOTAL_S = 540.0
"""The whole check's deadline by default: 9 minutes, inside a 10-minute GPU command."""
MIN_STEP_S = 15.0
"""A step is not started with less time left than this before the deadline."""
DRY_STEP_S = 300.0
"""Each step's budget in a dry run (a slow CPU must not time a dry run out)."""
KILL_WAIT_S = 10.0
"""How long a step that ran past its budget has to end after SIGTERM before SIGKILL."""


@dataclass
class Step:
    """One measurement: a ddbench command line (or, for the environment, a function), its budget on
    the GPU and, once run, what it gave."""

    name: str
    what: str
    argv: list[str] = field(default_factory=list)
    budget_s: float = 60.0
    call: Callable[[Path], int] | None = None
    figures: Callable[[], dict[str, Any]] | None = None

    @property
    def command(self) -> str:
        return "ddbench " + shlex.join(self.argv) if self.argv else f"(in-process: {self.what})"


def plan(out: Path, dry: bool) -> list[Step]:
    """The steps of the check, writing under ``out``; ``dry``: on CPU at the tiniest sizes."""
    device = "cpu" if dry else "cuda"
    default, ray, reproductions = out / "stores" / "default.sqlite", out / "stores" / "ray.sqlite", out / "stores" / "reproduce.sqlite"
    theory, pages = out / "figures" / "theory-measure.json", out / "reproduce"

    def size(tiny: list[str], full: list[str]) -> list[str]:
        return tiny if dry else full

    steps = [
        Step("environment", "device, driver, torch, CUDA, cuDNN, ddbench and its commit", budget_s=60.0,
             call=lambda path: environment(path, device)),
        Step("default-suite", "the default suite on CUDA: every distiller, both protocols",
             ["run", "--device", device, "--store", str(default),
              *size(["--task", "digits:epochs=1", "--budget", "ipc=1", "--distiller", "random", "--seeds", "1",
                     "--protocol", "native", "--protocol", "common"], [])],
             150.0, figures=lambda: store_figures(default)),
        Step("ensemble-speed", "K = 10 ConvNet-3 nets as one vmapped ensemble against sequential training (and bf16)",
             ["ensemble-speed", "--device", device, *size(["--k", "2", "--width", "8", "--epochs", "2", "--shape", "mnist", "--ipc", "1",
                                                           "--accuracy-epochs", "1"], ["--k", "10"])], 90.0),
        Step("gradmatch-timing", "seconds per outer iteration of dc, dsa and dm at ipc 1 and 10 against the per-class reference loop",
             ["gradmatch-timing", "--device", device, "--reference", "--methods", "dc", "dsa", "dm",
              *size(["--ipc", "1", "--task", "digits", "--profile", "quick", "--repeats", "1", "--dm-iterations", "1"],
                    ["--ipc", "1", "10"])], 120.0),
        Step("mtt-memory", "seconds and memory of one MTT iteration per gradient mode against syn_steps",
             ["mtt-memory", "--device", device, *size(["--task", "digits", "--ipc", "1", "--syn-steps", "2", "4", "--iterations", "1"],
                                                      ["--syn-steps", "10", "20", "40", "80", "--iterations", "5"])], 60.0),
        Step("theory-measure", "one streamed two-stage multi-index cell at d = 1024, L = 8192, n = 10^6, stage by stage",
             ["theory-measure", "--device", device, "--json", str(theory),
              *size(["--d", "16", "--L", "64", "--n", "2000", "--steps1", "5", "--n-test", "500", "--chunk", "1024"],
                    ["--d", "1024", "--r", "2", "--L", "8192", "--n", "1000000", "--steps1", "2000", "--steps2", "0",
                     "--n-test", "100000"])],
             120.0, figures=lambda: json.loads(theory.read_text()) if theory.is_file() else {}),
        Step("ray-executor", "the Ray executor with --gpus-per-cell 0.25: four cells share the GPU",
             ["run", "--executor", "ray", "--device", device, "--store", str(ray),
              *size(["--cpus-per-cell", "1", "--task", "digits:epochs=1", "--budget", "ipc=1", "--distiller", "random", "--seeds", "1"],
                    ["--gpus-per-cell", "0.25", "--task", "digits", "--budget", "ipc=10", "--distiller", "random", "--distiller", "dc",
                     "--distiller", "dsa", "--distiller", "dm", "--seeds", "3"])],
             120.0, figures=lambda: store_figures(ray)),
    ]
    for method in ("dc", "dsa", "dm", "mtt"):
        tiny_mtt = ":num_experts=1,expert_group=1,expert_epochs=1,max_start_epoch=1,syn_steps=2" if method == "mtt" else ""
        steps.append(Step(f"reproduce-{method}", f"{method} on mnist5k at ipc 1, the published length and recipe",
                          ["reproduce", method + size([tiny_mtt], [""])[0], "--task", size(["mnist5k:epochs=1"], ["mnist5k"])[0],
                           "--ipc", "1", "--device", device, "--store", str(reproductions), "--out", str(pages),
                           *size(["--iterations", "1", "--eval-seeds", "1", "--profile", "quick"], [])],
                          240.0, figures=partial(page_figures, pages / f"{method}-mnist5k.md")))
    if dry:
        for step in steps:
            step.budget_s = DRY_STEP_S
    return steps


# -- what the steps measure -------------------------------------------------------------------
def environment(path: Path, device: str) -> int:
    """Write the machine, the versions and the device to ``path`` (JSON); 2 when ``device`` is cuda
    and there is none. Runs in a step's child, so only that child initialises CUDA."""
    import torch

    from ddbench import __version__
    from ddbench.results.provenance import provenance

    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                            "torch": torch.__version__, "cuda": torch.version.cuda, "ddbench": __version__,
                            "commit": provenance().get("commit"), "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), devices=torch.cuda.device_count(),
                    capability=list(torch.cuda.get_device_capability(0)), memory_gib=round(props.total_memory / 2**30, 1),
                    cudnn=torch.backends.cudnn.version())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30, check=False)
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            info["nvidia_smi"] = f"not run ({exc})"
    else:
        info["device"] = "cpu"
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        info["ray"] = None
    path.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    print(json.dumps(info, indent=1, sort_keys=True))
    return 2 if device == "cuda" and not info["cuda_available"] else 0


def page_figures(path: Path) -> dict[str, Any]:
    """A reproduction page, as written (nothing where the step wrote none)."""
    return {"page": path.read_text()} if path.is_file() else {}


def store_figures(path: Path) -> dict[str, Any]:
    """The cells of a store: counts by status, the failed cells' errors, and one line per board row
    (mean, std, nets, seconds, peak memory, device)."""
    from ddbench.results.records import aggregate
    from ddbench.results.store import read_results

    if not path.is_file():
        return {}
    records = read_results(path, "store").records
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "skipped", "failed")}
    rows = [{"task": r.task, "row": r.label or r.distiller, "budget": r.budget, "protocol": r.protocol, "mean": r.mean,
             "std": r.std, "nets": r.nets, "distill_s": r.distill_s, "eval_s": r.eval_s, "peak_mb": r.peak_mb, "device": r.device,
             **({"overran_s": r.extra["overran_s"]} if "overran_s" in r.extra else {})}
            for r in aggregate(records) if r.ok]
    failed = [f"{r['config']['task']} / {r['config']['distiller']} / {r['config']['budget']}: {r.get('error', '')}"
              for r in records if r["status"] == "failed"]
    return {"cells": counts, "rows": rows, "failed": failed}


# -- running the steps ------------------------------------------------------------------------
@dataclass
class Running:
    """A step's child process: which step, where its output goes, when it started and must end."""

    step: Step
    index: int
    base: Path
    pid: int
    start: float
    deadline: float


def start_step(step: Step, index: int, folder: Path, budget_s: float) -> Running:
    """Fork a child that runs ``step`` (in its own process group, its stdout and stderr in files)."""
    base = folder / f"{index:02d}-{step.name}"
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(step, base)
    return Running(step, index, base, pid, start, start + budget_s)


def _child(step: Step, base: Path) -> None:
    """The body of a step's child process; never returns."""
    code = 1
    try:
        os.setsid()
        for fd, suffix in ((1, ".out"), (2, ".log")):
            handle = os.open(base.with_suffix(suffix), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # the process's streams, now the files (pytest replaces them)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        if step.call is not None:
            code = step.call(base.with_suffix(".figures.json"))
        else:
            from ddbench.cli import main

            code = main(step.argv)
    except BaseException:  # noqa: BLE001 - whatever a step raises ends its child with status 1; the check goes on
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) and 0 <= code < 256 else 1)


def poll(run: Running) -> tuple[str, int | None] | None:
    """(status, exit code) once the step's child ended, else None; past its deadline its process
    group is ended (SIGTERM, then SIGKILL) and its status is ``timeout``."""
    done, status = os.waitpid(run.pid, os.WNOHANG)
    if done:
        if os.WIFSIGNALED(status):
            return f"crashed ({signal.Signals(os.WTERMSIG(status)).name})", None
        code = os.WEXITSTATUS(status)
        return ("ok" if code == 0 else "failed"), code
    if time.monotonic() > run.deadline:
        end_group(run.pid)
        return "timeout", None
    return None


def end_group(pid: int) -> None:
    """End a step's child and everything in its process group: SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        end = time.monotonic() + KILL_WAIT_S
        while time.monotonic() < end:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
            time.sleep(0.1)


def record_of(run: Running, status: str, code: int | None) -> dict[str, Any]:
    """A finished step's record: the exact command, status, seconds, budget, exit code, the line
    that says why it failed, and its figures."""
    step, base = run.step, run.base
    record: dict[str, Any] = {"index": run.index, "step": step.name, "what": step.what, "command": step.command, "status": status,
                              "exit_code": code, "seconds": round(time.monotonic() - run.start, 1),
                              "budget_s": round(run.deadline - run.start, 1), "stdout": base.with_suffix(".out").name,
                              "stderr": base.with_suffix(".log").name}
    if status != "ok":
        record["error"] = last_error(base.with_suffix(".log"))
    try:
        if step.call is not None:
            figures = json.loads(base.with_suffix(".figures.json").read_text())
        elif step.figures is not None:
            figures = step.figures()
        else:
            figures = {"output": base.with_suffix(".out").read_text(errors="replace")}
    except Exception as exc:  # noqa: BLE001 - figures that cannot be read are recorded as such; the check goes on
        figures = {"unreadable": f"{type(exc).__name__}: {exc}"}
    record["figures"] = figures
    return record


def not_run(index: int, step: Step, left: float) -> dict[str, Any]:
    """The record of a step the deadline left no time for."""
    return {"index": index, "step": step.name, "what": step.what, "command": step.command, "status": "not run: no time left",
            "exit_code": None, "seconds": 0.0, "budget_s": round(max(left, 0.0), 1)}


def run_steps(steps: list[tuple[int, Step]], folder: Path, deadline: float, jobs: int,
              done: Callable[[int, dict[str, Any]], None]) -> None:
    """Run ``steps`` (index, step), ``jobs`` at a time, each within its budget and the deadline;
    ``done(index, record)`` as each ends. A step with under :data:`MIN_STEP_S` left is not run."""
    waiting, running = list(steps), list[Running]()
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                index, step = waiting.pop(0)
                left = deadline - time.monotonic()
                if left < MIN_STEP_S:
                    done(index, not_run(index, step, left))
                    continue
                budget = min(step.budget_s, left)
                print(f"gpu_check: {step.name} (budget {budget:.0f} s): {step.command}", file=sys.stderr, flush=True)
                running.append(start_step(step, index, folder, budget))
            for run in list(running):
                ended = poll(run)
                if ended is not None:
                    running.remove(run)
                    record = record_of(run, *ended)
                    print(f"gpu_check: {run.step.name}: {record['status']} in {record['seconds']} s", file=sys.stderr, flush=True)
                    done(run.index, record)
            time.sleep(0.1)
    finally:  # interrupted: no step outlives the check
        for run in running:
            end_group(run.pid)


def last_error(path: Path) -> str:
    """The line of a step's stderr that says why it failed: ddbench's one-line error, else its last line."""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.is_file() else []
    errors = [line for line in lines if line.startswith("ddbench: error:")]
    return (errors or lines or [""])[-1][:1000]


# -- the report -------------------------------------------------------------------------------
def write_report(out: Path, records: list[dict[str, Any]], invocation: str, dry: bool, started: str, total_s: float) -> None:
    """``gpu-check.json`` (every step's record) and ``summary.md``."""
    (out / "gpu-check.json").write_text(json.dumps({"invocation": invocation, "dry_run": dry, "started": started,
                                                    "total_budget_s": total_s, "steps": records}, indent=1, default=str) + "\n")
    env: dict[str, Any] = next((r["figures"] for r in records if r["step"] == "environment"), {})
    device = env.get("device", "?")
    if env.get("cuda_available"):
        device += f" ({env.get('memory_gib')} GiB, capability {env.get('capability')}; nvidia-smi: {env.get('nvidia_smi')})"
    versions = (f"ddbench {env.get('ddbench', '?')} (commit {env.get('commit') or 'unknown'}), torch {env.get('torch', '?')}, "
                f"CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, Python {env.get('python', '?')}, Ray {env.get('ray')}; "
                f"{env.get('platform', '?')}, {env.get('cpus', '?')} CPUs")
    lines = [f"# ddbench GPU check{' (dry run on CPU: tiniest sizes, no figure to keep)' if dry else ''}", "",
             f"- Run: `{invocation}`, started {started}, deadline {total_s:g} s.", f"- Device: {device}.", f"- Versions: {versions}.",
             "", "| # | step | status | seconds | budget s | command |", "|---:|---|---|---:|---:|---|"]
    lines += [f"| {r['index']} | {r['step']} | {r['status']} | {r['seconds']} | {r['budget_s']} | `{r['command']}` |" for r in records]
    for r in records:
        lines += ["", f"## {r['index']}. {r['step']}: {r['status']}", "", r["what"] + ".", "", f"`{r['command']}`"]
        if r.get("error"):
            lines += ["", f"Error: {r['error']}"]
        lines += ["", *figure_lines(r.get("figures", {}))]
    (out / "summary.md").write_text("\n".join(lines).rstrip() + "\n")


def figure_lines(figures: dict[str, Any]) -> list[str]:
    """A step's figures as Markdown: a page or a command's output as they are, board rows as a table, the rest as JSON."""
    if "page" in figures:
        return [figures["page"]]
    if "output" in figures:
        return ["```", figures["output"].rstrip(), "```"] if figures["output"].strip() else ["(no output)"]
    if "rows" in figures:
        out = [f"Cells: {figures['cells']}.", "", "| task | row | budget | protocol | mean ± std | nets | distill s | eval s | peak MB |",
               "|---|---|---|---|---:|---:|---:|---:|---:|"]
        out += [f"| {r['task']} | {r['row']} | {r['budget']} | {r['protocol']} | {r['mean']:.2f} ± {r['std']:.2f} | {r['nets']} "
                f"| {r['distill_s']:.1f} | {r['eval_s']:.1f} | {r['peak_mb']:.0f} |" for r in figures["rows"]]
        return out + [f"- failed: {e}" for e in figures["failed"]]
    return ["```json", json.dumps(figures, indent=1, sort_keys=True, default=str), "```"] if figures else ["(no figures)"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder the figures go into (created; on a GPU machine, e.g. $OUT)")
    parser.add_argument("--dry-run", action="store_true", help="every step on CPU at the tiniest sizes (seconds each)")
    parser.add_argument("--total-s", type=float, default=None,
                        help=f"deadline of the whole check in seconds (default {TOTAL_S:g}; a dry run: none)")
    parser.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps (and the environment; default: all, in order)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="dry run only: steps run side by side (they measure nothing there; default 1)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.jobs < 1 or (args.jobs > 1 and not args.dry_run):
        print(f"gpu_check: error: --jobs {args.jobs}: steps run one at a time on the GPU (their timings are figures); "
              "--jobs N > 1 is for --dry-run only.", file=sys.stderr)
        return 2
    if out.exists() and not out.is_dir():
        print(f"gpu_check: error: --out {str(out)!r} is a file: pass a folder (it is created if missing).", file=sys.stderr)
        return 2
    steps = plan(out.resolve(), args.dry_run)
    names = [s.name for s in steps]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        print(f"gpu_check: error: unknown step(s) {', '.join(unknown)} in --only: the steps are {', '.join(names)}.", file=sys.stderr)
        return 2
    from ddbench.plugins import get_plugin_manager

    if not get_plugin_manager().names("distiller"):  # also imports every plugin once, before the children fork
        print("gpu_check: error: ddbench's plugins are not installed in this Python: run `pip install -e .` in the checkout first.",
              file=sys.stderr)
        return 2
    total_s = args.total_s if args.total_s is not None else (len(steps) * DRY_STEP_S if args.dry_run else TOTAL_S)
    folder = out / "steps"
    folder.mkdir(parents=True, exist_ok=True)
    invocation = shlex.join(["python", "scripts/gpu_check.py", *(argv if argv is not None else sys.argv[1:])])
    started, deadline = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.monotonic() + total_s
    records: dict[int, dict[str, Any]] = {}

    def done(index: int, record: dict[str, Any]) -> None:
        (folder / f"{index:02d}-{record['step']}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
        records[index] = record
        write_report(out, [records[i] for i in sorted(records)], invocation, args.dry_run, started, total_s)

    chosen = [(i, s) for i, s in enumerate(steps) if i == 0 or not args.only or s.name in args.only]
    try:
        run_steps(chosen[:1], folder, deadline, 1, done)  # the environment, alone: without its device nothing else runs
        if records[0]["status"] != "ok":
            print(f"gpu_check: error: {records[0].get('error') or 'no CUDA device here'}: run it on a GPU machine, or pass --dry-run.",
                  file=sys.stderr)
            return 2
        run_steps(chosen[1:], folder, deadline, args.jobs, done)
    except KeyboardInterrupt:
        print(f"gpu_check: interrupted; the steps that finished are in {out / 'summary.md'}.", file=sys.stderr)
        return 130
    print(out / "summary.md")
    return 0 if all(r["status"] == "ok" for r in records.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
