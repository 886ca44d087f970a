"""Seconds per iteration and memory of the MTT gradient modes versus syn_steps (§8, §12).

Memory is measured two ways: the peak bytes of tensors autograd keeps for backward (counted with
``saved_tensors_hooks``, device-independent, plus the N parameter vectors the adjoint modes
store), and on CUDA the peak of ``torch.cuda.max_memory_allocated`` above the inputs.

GPU run (prints one row per mode and syn_steps; the command ``ddbench mtt-memory``, registered
through ``ddbench_register_commands``)::

    ddbench mtt-memory --device cuda --task mnist5k --ipc 10 --syn-steps 10 30
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from ddbench.contracts.hookspecs import Command
from ddbench.ops.augment import DSA
from ddbench.ops.device import resolve_device
from ddbench.plugins import get_plugin_manager, instantiate
from ddbench.run.suite import load_task
from ddbench_mtt.flat import FlatModel
from ddbench_mtt.unroll import EXACT_MODES, MODES, Gradients, draw_schedule, gradient_fn


class _Saved:
    """A tensor saved for backward; its bytes stay counted until autograd drops it."""

    __slots__ = ("meter", "nbytes", "tensor")

    def __init__(self, tensor: Tensor, meter: SavedTensorMeter):
        self.tensor, self.nbytes, self.meter = tensor, tensor.numel() * tensor.element_size(), meter
        meter.live += self.nbytes
        meter.peak = max(meter.peak, meter.live)

    def __del__(self) -> None:
        self.meter.live -= self.nbytes


class SavedTensorMeter:
    """Peak bytes of tensors saved for backward while :meth:`watch` is active (each save counted,
    shared storage included), a device-independent proxy for activation memory."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    @contextmanager
    def watch(self) -> Iterator[SavedTensorMeter]:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: _Saved(t, self), lambda s: s.tensor):
            yield self


def graph_bytes(mode: str, call: Callable[[], Gradients], syn_steps: int, params: int, element_size: int) -> int:
    """Peak saved-for-backward bytes of one gradient call, plus the N stored parameter vectors of
    the adjoint modes (``unroll`` keeps them inside its graph, already counted)."""
    meter = SavedTensorMeter()
    with meter.watch():
        call()
    return meter.peak + (0 if mode == "unroll" else syn_steps * params * element_size)


def setup(task: str, ipc: int, device: torch.device, learner: str = "convnet", profile: str = "full",
          seed: int = 0) -> dict[str, Any]:
    """A student on real images of ``task`` (ipc per class), a start vector and a perturbed target:
    what one MTT iteration needs, without training experts (costs do not depend on their values)."""
    manager = get_plugin_manager()
    _, view, _ = load_task(manager, task, {}, profile, device)
    net = instantiate(manager.learners.get(learner), {}, profile)
    model = FlatModel(net.build(view, seed).to(device))
    classes: int = view.num_classes  # type: ignore[assignment]  # MTT runs on classification tasks only
    idx = torch.cat([view.class_index(c)[:ipc] for c in range(classes)])
    start = model.flatten()
    g = torch.Generator(device).manual_seed(seed)
    target = start + 0.01 * torch.randn(start.shape, generator=g, device=device)
    return {"model": model, "images": view.train.x[idx].clone(), "labels": view.train.y[idx].clone(), "start": start,
            "target": target, "dsa": DSA(view.info["dsa_strategy"], seed, device), "generator": g}


def run_mode(case: dict[str, Any], mode: str, syn_steps: int, alpha: float = 0.01) -> Callable[[], Gradients]:
    """A zero-argument call doing one gradient computation of ``mode`` with a fresh schedule."""
    images, device = case["images"], case["images"].device
    grads = gradient_fn(mode)
    alpha_t = torch.tensor(alpha, device=device)

    def call() -> Gradients:
        schedule = draw_schedule(len(images), syn_steps, len(images), case["dsa"], images.shape[-1], case["generator"], device)
        return grads(case["model"], images, case["labels"], alpha_t, case["start"], case["target"], schedule)

    return call


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda", help="cuda[:N] (default) or cpu")
    parser.add_argument("--task", default="mnist5k", help="task whose real images start the student (default mnist5k)")
    parser.add_argument("--ipc", type=int, default=10, help="images per class of the synthetic set (default 10)")
    parser.add_argument("--syn-steps", type=int, nargs="+", default=[10, 30], help="student steps N per iteration (default 10 30)")
    parser.add_argument("--modes", nargs="+", default=list(EXACT_MODES), choices=MODES, help="gradient modes (default: the exact ones)")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations after one warm-up")


def run(args: argparse.Namespace) -> int:
    """One line per (syn_steps, mode): seconds per iteration, CUDA peak MB above the inputs, graph MB."""
    device = resolve_device(args.device)
    case = setup(args.task, args.ipc, device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = "cpu"
    print(f"device {name}; task {args.task} ipc={args.ipc}; ConvNet-3 with {case['model'].size} parameters")
    print(f"{'mode':<24}{'syn_steps':>10}{'s/iteration':>14}{'peak MB':>10}{'graph MB':>10}")
    for steps in args.syn_steps:
        for mode in args.modes:
            call = run_mode(case, mode, steps)
            call()  # warm-up
            if cuda:
                torch.cuda.synchronize(device)
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            for _ in range(args.iterations):
                call()
            if cuda:
                torch.cuda.synchronize(device)
            seconds = (time.perf_counter() - start) / args.iterations
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if cuda else float("nan")
            graph = graph_bytes(mode, call, steps, case["model"].size, case["start"].element_size()) / 2**20
            print(f"{mode:<24}{steps:>10}{seconds:>14.4f}{peak:>10.1f}{graph:>10.1f}")
    return 0


COMMAND = Command("mtt-memory", "seconds per iteration and memory of the MTT gradient modes against syn_steps", run, arguments,
                  __doc__.split("\n\n")[0].replace("\n", " "))

