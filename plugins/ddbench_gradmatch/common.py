"""Pieces shared by the DC, DSA and DM distillers: applicability, the declared evaluation recipe,
seeds for host-side draws, fresh networks on the device, and throttled progress reporting."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ddbench.contracts import options
from ddbench.contracts.deviations import Deviation
from ddbench.contracts.interfaces import Learner, Progress, TaskView
from ddbench.ops.steps import draw_seed
from ddbench_gradmatch.sampling import INITS

MNIST_TASKS = ("mnist", "mnist5k")  # DC evaluates MNIST with DC-augment and E = 1000 (§3)
EVAL_EPOCHS_FULL = 1000  # E for DSA, DM and DC on MNIST in the full profile (§3)
REPORTS = 100  # progress reports per run: each one reads the loss back from the device

# Departures from the official code that dc, dsa and dm share (each lists its whole table itself).
QUICK_WHY = "CPU-sized quick profile"
QUICK_WIDTH = Deviation("ConvNet width", "128", "the convnet learner's quick width, 32", QUICK_WHY, "profile=quick")
QUICK_EPOCHS = Deviation("evaluation epochs E", "1,000", "the task's quick E", QUICK_WHY, "profile=quick")
SIAMESE_SEEDS = Deviation("random seeds", "the global generator reseeded from the clock (ms mod 100,000) for every network and "
                          "every class's siamese draw: classes matched within one millisecond share a transform",
                          "explicit seeds from the run's seed: an independent siamese draw per class",
                          "reproducible runs (docs/methods.md §10.1)")


def check_values(momentum_img: float, init: str, **counts: float | None) -> None:
    """Reject option values the methods cannot use (:mod:`ddbench.contracts.options`)."""
    options.positive(**counts)
    options.within("momentum_img", momentum_img, 0, 1)
    options.one_of("init", init, INITS)


def classification_reason(task: TaskView, method: str) -> str | None:
    if task.num_classes is None:
        return f"{method} matches per class; task {task.name!r} is regression"
    return None


def image_reason(task: TaskView, method: str, strategy: str | None) -> str | None:
    """Why DSA-based ``method`` cannot run on ``task`` (no classes, not images, no strategy), or None."""
    reason = classification_reason(task, method)
    if reason is None and len(task.input_shape) != 3:
        reason = f"{method} augments (C, H, W) images with DSA; task {task.name!r} has inputs of shape {task.input_shape}"
    if reason is None and not (strategy or task.info.get("dsa_strategy")):
        reason = f"task {task.name!r} declares no DSA strategy: pass the option dsa_strategy"
    return reason


def dsa_strategy(task: TaskView, option: str | None) -> str:
    """The option if given, else the task's DSA strategy of §1 (no flip for digits)."""
    return option or task.info["dsa_strategy"]


def eval_recipe(profile: str, augment: str, strategy: str | None = None, epochs: int | None = EVAL_EPOCHS_FULL) -> dict[str, Any]:
    """Recipe overrides an artifact declares (§3). The ``quick`` profile keeps the task's epochs."""
    recipe: dict[str, Any] = {"augment": augment}
    if strategy is not None:
        recipe["dsa_strategy"] = strategy
    if profile == "full" and epochs is not None:
        recipe["epochs"] = epochs
    return recipe


class HostSeeds:
    """Integers for per-iteration network seeds and augmentation streams, drawn on the CPU from the
    run's seed (explicit and reproducible, §10.1; no device read-back inside the loops)."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self) -> int:
        return draw_seed(self.generator)


class LossLog:
    """Reports ``(iteration, loss)`` about ``REPORTS`` times per run and keeps them for the
    artifact's meta; the loss stays on the device between reports (no per-iteration host sync)."""

    def __init__(self, progress: Progress, total: int):
        self.progress, self.total = progress, total
        self.every = max(1, total // REPORTS)
        self.history: list[tuple[int, float]] = []

    def __call__(self, step: int, loss: Tensor) -> None:
        if step % self.every == 0 or step == self.total:
            value = float(loss)
            self.history.append((step, value))
            self.progress.update(step, self.total, loss=value)


class FreshNetworks:
    """A freshly initialised network of the learner per call (DC's outer iterations, DM's
    iterations), each from its own seed (§2: PyTorch's default initialisation, explicit seeds).

    The first call builds it with ``learner.build(task, seed)``; later calls redraw the same
    module's parameters in place with each layer's ``reset_parameters()`` under the device's RNG
    seeded with the new seed, so no network is built on the host and copied over (a copy to the
    GPU waits for the queue). On the CPU this equals ``learner.build(task, seed)`` for learners
    made of standard layers. If some parameter belongs to no layer with ``reset_parameters``, every
    call uses ``learner.build``.
    """

    def __init__(self, learner: Learner, task: TaskView, device: torch.device, seeds: HostSeeds):
        self.learner, self.task, self.device, self.seeds = learner, task, device, seeds
        self.net: nn.Module | None = None
        self.resettable = False

    def __call__(self) -> nn.Module:
        seed = self.seeds()
        if self.net is None or not self.resettable:
            return self._build(seed)
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device] if cuda else []):
            index = torch.cuda.current_device() if cuda and self.device.index is None else self.device.index
            generator = torch.cuda.default_generators[index] if cuda else torch.default_generator
            generator.manual_seed(seed)
            for module in self.net.modules():
                reset = getattr(module, "reset_parameters", None)  # not hasattr: mypy reads Module attributes as Tensor | Module
                if reset is not None:
                    reset()
        return self.net

    def prime(self) -> None:
        """Build the network without drawing a seed, as a run resumed from a checkpoint does before
        its first iteration, so that its next call redraws the network in place as the uninterrupted
        run's did (on a GPU, building on the host and redrawing on the device differ)."""
        if self.net is None:
            self._build(0)

    def _build(self, seed: int) -> nn.Module:
        self.net = self.learner.build(self.task, seed).to(self.device)
        self.resettable = all(id(p) in self._owned() for p in self.net.parameters())
        return self.net

    def _owned(self) -> set[int]:
        assert self.net is not None
        return {id(p) for m in self.net.modules() if hasattr(m, "reset_parameters") for p in m.parameters(recurse=False)}


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
