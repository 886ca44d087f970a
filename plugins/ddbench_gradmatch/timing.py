"""Seconds per outer iteration and peak memory of dc, dsa and dm on a device, and beside dc and dsa
those of the benchmark's reference loop (the published per-class loop, reference_loop.py).

    ddbench gradmatch-timing --task mnist5k --ipc 1 10 --threads 1 --reference

Each (method, ipc) runs one warm-up iteration (allocator, oneDNN/cuDNN kernels; the reference's
too), then ``--repeats`` timed runs of ``--iterations`` outer iterations each (``--dm-iterations``
for dm), with a device synchronisation at the end of each run only, under the malloc settings of
``ddbench run``'s workers (:func:`ddbench.run.worker.warm_allocator`). With ``--reference`` the
reference's runs alternate with ddbench's (ABBA order), so load that other processes put on the
machine falls on both alike. Prints a Markdown table of the medians: seconds per outer iteration,
the peak memory a run adds (CUDA: the peak allocation; CPU: the peak resident set above the one
before the run, from ``/proc``), the reference's seconds and the ratio ddbench / reference, and
the projected time of the options' iteration count (the spec's in the ``full`` profile), to size a
suite's iterations against a time budget. The command is registered through
``ddbench_register_commands``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from ddbench.contracts.hookspecs import Command
from ddbench.contracts.interfaces import Distiller, Learner, RunContext, TaskView
from ddbench.ops.device import resolve_device
from ddbench.plugins import PluginManager, get_plugin_manager, instantiate, options_of
from ddbench.run.suite import load_task
from ddbench.run.worker import warm_allocator
from ddbench.vocab import Budget
from ddbench_gradmatch.dc import DCDistiller
from ddbench_gradmatch.reference_loop import reference_distill


def _rss_mb(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` (the peak) of this process in MiB; NaN where /proc has none."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak_rss() -> None:
    try:  # Linux: "5" resets VmHWM to the current resident set
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def timed(run: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(seconds, MiB of peak memory above the start) of one call of ``run`` on ``device``."""
    base: float  # bytes on CUDA, MiB on the CPU
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        _reset_peak_rss()
        base = _rss_mb("VmRSS")
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        return seconds, (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return seconds, _rss_mb("VmHWM") - base


def measure(manager: PluginManager, view: TaskView, learner_name: str, method: str, ipc: int, iterations: int,
            repeats: int, profile: str, device: torch.device, reference: bool) -> dict[str, float]:
    """Medians over ``repeats`` runs of ``iterations`` outer iterations of ``method`` at ``ipc``
    (and of the reference loop, interleaved, when ``reference`` and the method is dc or dsa),
    after one warm-up iteration of each."""
    learner: Learner = instantiate(manager.learners.get(learner_name), {}, profile)
    distiller_cls = manager.distillers.get(method)
    spec_iterations = {**options_of(distiller_cls), **(distiller_cls.quick if profile == "quick" else {})}["iterations"]
    budget = Budget("ipc", ipc)

    def runner(n: int, ref: bool) -> Callable[[], object]:
        distiller: Distiller = instantiate(distiller_cls, {"iterations": n}, profile)
        context = RunContext(device, 0, torch.Generator(device).manual_seed(0), profile=profile)
        if ref:
            assert isinstance(distiller, DCDistiller)
            return lambda: reference_distill(distiller, view, budget, learner, context)
        return lambda: distiller.distill(view, budget, learner, context)

    sides = [False, True] if reference and issubclass(distiller_cls, DCDistiller) else [False]
    for ref in sides:
        runner(1, ref)()
    samples: dict[bool, list[tuple[float, float]]] = {ref: [] for ref in sides}
    for r in range(repeats):
        for ref in sides if r % 2 == 0 else sides[::-1]:
            samples[ref].append(timed(runner(iterations, ref), device))
    out = {"iterations": spec_iterations}
    for ref, name in zip(sides, ("", "reference_")):
        out[name + "s_per_iteration"] = statistics.median(s for s, _ in samples[ref]) / iterations
        out[name + "peak_mb"] = statistics.median(m for _, m in samples[ref])
    out["projected_s"] = out["s_per_iteration"] * spec_iterations
    return out


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="mnist5k", help="task to distil (default mnist5k)")
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10], help="images per class (default 1 10)")
    parser.add_argument("--methods", nargs="+", default=["dc", "dsa", "dm"], help="distillers to time (default dc dsa dm)")
    parser.add_argument("--iterations", type=int, default=1, help="outer iterations of dc and dsa per timed run (default 1)")
    parser.add_argument("--dm-iterations", type=int, default=100, help="iterations of dm per timed run (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per (method, ipc); the table shows medians (default 3)")
    parser.add_argument("--reference", action="store_true", help="also time the reference loop for dc and dsa, interleaved")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--profile", choices=["quick", "full"], default="full", help="sizes of the task and methods (default full)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")


def run(args: argparse.Namespace) -> int:
    """The Markdown table: one line per (method, ipc)."""
    warm_allocator()  # glibc's malloc as in ddbench run's workers (large tensors reuse memory, no fresh page faults)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    manager, device = get_plugin_manager(), resolve_device(args.device)
    task, view, _ = load_task(manager, args.task, {}, args.profile, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"{args.task}, profile {args.profile}, device {name}, {torch.get_num_threads()} CPU thread(s), "
          f"torch {torch.__version__}, {args.repeats} repeats, load average at start {load}\n")
    print("| method | ipc | s / outer iteration | peak MB | reference s | reference peak MB | ratio | iterations (options) "
          "| projected s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method in args.methods:
        for ipc in args.ipc:
            n = args.dm_iterations if method == "dm" else args.iterations
            r = measure(manager, view, task.default_learner, method, ipc, n, args.repeats, args.profile, device, args.reference)
            ref = "reference_s_per_iteration" in r
            cells = [method, ipc, f"{r['s_per_iteration']:.4f}", f"{r['peak_mb']:.0f}",
                     f"{r['reference_s_per_iteration']:.4f}" if ref else "-", f"{r['reference_peak_mb']:.0f}" if ref else "-",
                     f"{r['s_per_iteration'] / r['reference_s_per_iteration']:.2f}" if ref else "-",
                     r["iterations"], f"{r['projected_s']:.0f}"]
            print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    return 0


COMMAND = Command("gradmatch-timing", "seconds per outer iteration and peak memory of dc, dsa and dm (and the reference loop)",
                  run, arguments, __doc__.split("\n\n")[0])

