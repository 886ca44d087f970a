"""Seconds per outer iteration and peak memory of dc, dsa and dm on a device.

    ddbench gradmatch-timing --task mnist5k --ipc 1 10 --device cuda

Each (method, ipc) runs once for warm-up (allocator, cuDNN), then ``--iterations`` outer
iterations (``--dm-iterations`` for dm), timed with a device synchronisation at the end only.
Prints a Markdown table with the projected time of the options' iteration count (the spec's in
the ``full`` profile) so suite iteration counts can be sized against a time budget. The command
is registered through ``ddbench_register_commands``.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from ddbench.harness import resolve_device
from ddbench.hookspecs import Command
from ddbench.interfaces import Budget, RunContext, TaskView
from ddbench.plugins import PluginManager, get_plugin_manager, instantiate, options_of
from ddbench.suite import load_task


def measure(manager: PluginManager, view: TaskView, learner_name: str, method: str, ipc: int, iterations: int,
            profile: str, device: torch.device) -> dict[str, float]:
    """Time ``iterations`` outer iterations of ``method`` at ``ipc`` on ``view`` after one warm-up iteration."""
    learner = instantiate(manager.learners.get(learner_name), {}, profile)
    distiller_cls = manager.distillers.get(method)
    spec_iterations = {**options_of(distiller_cls), **(distiller_cls.quick if profile == "quick" else {})}["iterations"]

    def run(n: int) -> float:
        distiller = instantiate(distiller_cls, {"iterations": n}, profile)
        context = RunContext(device, 0, torch.Generator(device).manual_seed(0), profile=profile)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        distiller.distill(view, Budget("ipc", ipc), learner, context)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    run(1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_iteration = run(iterations) / iterations
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {"s_per_iteration": per_iteration, "peak_mb": peak, "iterations": spec_iterations,
            "projected_s": per_iteration * spec_iterations}


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="mnist5k", help="task to distil (default mnist5k)")
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10], help="images per class (default 1 10)")
    parser.add_argument("--methods", nargs="+", default=["dc", "dsa", "dm"], help="distillers to time (default dc dsa dm)")
    parser.add_argument("--iterations", type=int, default=5, help="timed outer iterations of dc and dsa")
    parser.add_argument("--dm-iterations", type=int, default=100, help="timed iterations of dm")
    parser.add_argument("--profile", choices=["quick", "full"], default="full", help="sizes of the task and methods (default full)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")


def run(args: argparse.Namespace) -> int:
    """The Markdown table: one line per (method, ipc)."""
    manager, device = get_plugin_manager(), resolve_device(args.device)
    task, view, _ = load_task(manager, args.task, {}, args.profile, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.task}, profile {args.profile}, device {name}, torch {torch.__version__}\n")
    print("| method | ipc | s / outer iteration | peak MB | iterations (options) | projected s |")
    print("|---|---|---|---|---|---|")
    for method in args.methods:
        for ipc in args.ipc:
            n = args.dm_iterations if method == "dm" else args.iterations
            r = measure(manager, view, task.default_learner, method, ipc, n, args.profile, device)
            cells = [method, ipc, f"{r['s_per_iteration']:.4f}", f"{r['peak_mb']:.0f}", r["iterations"], f"{r['projected_s']:.0f}"]
            print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    return 0


COMMAND = Command("gradmatch-timing", "seconds per outer iteration and peak memory of dc, dsa and dm", run, arguments,
                  __doc__.split("\n\n")[0])


if __name__ == "__main__":  # the former script: the same as `ddbench gradmatch-timing ...`
    from ddbench.cli import main

    sys.exit(main(["gradmatch-timing", *sys.argv[1:]]))
