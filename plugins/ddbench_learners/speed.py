"""Speed of the vmapped evaluation ensemble against sequential training, and the effect of bf16.

For the GPU check of issue 8 (docs/methods.md §13.3, §13.5), the command ``ddbench
ensemble-speed`` (registered through ``ddbench_register_commands``)::

    ddbench ensemble-speed --device cuda

1. Speed: K ConvNet-3 models (full width 128) on random CIFAR-10- or MNIST-shaped tensors at ipc=10
   (100 images, one batch per epoch), per-sample DSA, ``--epochs`` epochs: sequential
   ``train_classifier`` one model after the other versus one ``train_ensemble`` call (grouped path
   and the generic vmap path), wall time after a warm-up, and the ratio.
   Also the ops issued per training step (each a kernel launch on a GPU; device-independent).
2. ``--profile``: where the ensemble's time goes: the device's busy time against wall time (near
   equal: compute-bound; far apart: launch-bound) and the top ops by device time.
3. Equality and bf16: the same K models trained on the digits task (ships with scikit-learn, no
   download) at ipc=10 for ``--accuracy-epochs`` epochs, sequential fp32, ensemble fp32 and
   ensemble bf16 autocast; per-model test accuracies and their means.
"""
from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from ddbench import Artifact, Recipe
from ddbench.contracts.hookspecs import Command
from ddbench.ops.device import resolve_device
from ddbench.ops.ensemble import train_ensemble
from ddbench.ops.steps import seeded
from ddbench.ops.training import train_classifier
from ddbench.plugins import get_plugin_manager
from ddbench.run.suite import load_task
from ddbench_learners.convnet import ConvNet

DSA = "color_crop_cutout_flip_scale_rotate"


class Chained(nn.Module):
    """ConvNet-3 behind a plain module (not a :class:`~ddbench.ops.ensemble.LayerChain`): forces the
    engine's generic vmap path, with the same initial weights as ``ConvNet``."""

    def __init__(self, shape: tuple[int, ...], classes: int, width: int):
        super().__init__()
        self.net = ConvNet(shape, classes, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def build(cls: type[nn.Module], shape: tuple[int, ...], k: int, width: int, device: torch.device) -> list[nn.Module]:
    return [seeded(s, lambda: cls(shape, 10, width)).to(device) for s in range(k)]


def generators(k: int, device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device).manual_seed(s) for s in range(k)]


SHAPES = {"cifar10": (3, 32, 32), "mnist": (1, 28, 28)}


def speed(args: argparse.Namespace, device: torch.device) -> None:
    shape = SHAPES[args.shape]
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(10 * args.ipc, *shape, generator=gen, device=device)
    y = torch.arange(10, device=device).repeat_interleave(args.ipc)
    recipe = Recipe(epochs=args.epochs - 1, augment="dsa", dsa_strategy=DSA)
    warm = Recipe(epochs=2, augment="dsa", dsa_strategy=DSA)

    def sequential(r: Recipe) -> None:
        for model, g in zip(build(ConvNet, shape, args.k, args.width, device), generators(args.k, device)):
            train_classifier(model, Artifact({"x": x, "y": y}), r, g)

    def ensemble(cls: type[nn.Module], r: Recipe) -> None:
        train_ensemble(build(cls, shape, args.k, args.width, device), x, y, r, generators(args.k, device))

    runs = {"sequential": sequential, "ensemble (grouped)": lambda r: ensemble(ConvNet, r),
            "ensemble (vmap)": lambda r: ensemble(Chained, r)}
    times = {}
    for name, run in runs.items():
        run(warm)
        times[name] = timed(partial(run, recipe), device)
    steps = {name: ops_per_step(run, device) for name, run in runs.items()}
    print(f"\nspeed: K={args.k} ConvNet-3 width {args.width}, {args.shape} shape {shape}, ipc={args.ipc}, {args.epochs} epochs, DSA, "
          f"device {device_name(device)}")
    for name, t in times.items():
        print(f"  {name:20s} {t:8.2f} s  {t / args.epochs * 1e3:8.2f} ms/epoch  ratio {times['sequential'] / t:5.2f}x  "
              f"{steps[name]:6.0f} ops/epoch")
    if args.profile:
        profiled(lambda: runs["ensemble (grouped)"](recipe), device, args.epochs)


def ops_per_step(run, device: torch.device) -> float:
    """Top-level ops issued per epoch (one step at ipc=10), from the difference of a 12- and a
    2-epoch run (one block of draws each, so set-up costs cancel)."""
    def count(epochs: int) -> int:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(Recipe(epochs=epochs - 1, augment="dsa", dsa_strategy=DSA))
            sync(device)
        return sum(1 for e in prof.events() if e.name.startswith("aten::") and
                   (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))
    return (count(12) - count(2)) / 10


def profiled(run, device: torch.device, epochs: int) -> None:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        run()
        sync(device)
    wall = time.perf_counter() - start
    table = prof.key_averages()
    if device.type == "cuda":
        busy = sum(e.self_device_time_total for e in table) / 1e6
        print(f"\nprofile (ensemble, {epochs} epochs): device busy {busy:.2f} s of {wall:.2f} s wall "
              f"({busy / epochs * 1e3:.2f} of {wall / epochs * 1e3:.2f} ms/epoch)")
    print(table.table(sort_by="self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total", row_limit=20))


def accuracy(args: argparse.Namespace, device: torch.device) -> None:
    _, view, test = load_task(get_plugin_manager(), "digits", {}, "full", device)
    idx = torch.cat([view.class_index(c)[: args.ipc] for c in range(10)])
    x, y = view.train.x[idx], view.train.y[idx]
    recipe = Recipe(epochs=args.accuracy_epochs, augment="dsa", dsa_strategy="color_crop_cutout_scale_rotate")

    def score(models: list[nn.Module]) -> list[float]:
        with torch.no_grad():
            return [100.0 * (m(test.x).argmax(1) == test.y).float().mean().item() for m in models]

    results = {}
    models = build(ConvNet, view.input_shape, args.k, args.width, device)
    seconds = timed(lambda: [train_classifier(m, Artifact({"x": x, "y": y}), recipe, g)
                             for m, g in zip(models, generators(args.k, device))], device)
    results["sequential fp32"] = (score(models), seconds)
    for name, bf16 in (("ensemble fp32", False), ("ensemble bf16", True)):
        models = build(ConvNet, view.input_shape, args.k, args.width, device)
        seconds = timed(lambda: train_ensemble(models, x, y, recipe, generators(args.k, device), bf16=bf16),  # noqa: B023 - called at once
                        device)
        results[name] = (score(models), seconds)
    print(f"\naccuracy: digits ipc={args.ipc}, K={args.k} ConvNet-3 width {args.width}, E={args.accuracy_epochs}, DSA"
          f"{' (bf16 is ignored on cpu)' if device.type == 'cpu' else ''}")
    for name, (acc, seconds) in results.items():
        print(f"  {name:16s} mean {statistics.fmean(acc):6.2f} std {statistics.pstdev(acc):5.2f}  {seconds:7.1f} s  "
              f"per model {' '.join(f'{a:.2f}' for a in acc)}")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    parser.add_argument("--k", type=int, default=10, help="models trained together (default 10)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cifar10", help="input shape of the speed run")
    parser.add_argument("--ipc", type=int, default=10, help="images per class (default 10)")
    parser.add_argument("--width", type=int, default=128, help="ConvNet-3 width (default 128)")
    parser.add_argument("--epochs", type=int, default=100, help="epochs timed in the speed run")
    parser.add_argument("--profile", action="store_true", help="profile the ensemble run: device time against wall time")
    parser.add_argument("--accuracy-epochs", type=int, default=300, help="E of the accuracy run (E + 1 epochs); 0 skips it")


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes (docs/methods.md §13.6)
    speed(args, device)
    if args.accuracy_epochs > 0:
        accuracy(args, device)
    return 0


COMMAND = Command("ensemble-speed", "speed of the vmapped evaluation ensemble against sequential training, and bf16",
                  run, arguments, __doc__.split("\n\n")[0])

