"""The three interfaces (Task, Learner, Distiller) and the objects that pass between them.

A registered component is a *class*: its ``name`` class attribute is its public name, and its
constructor's keyword arguments are its options (``--task multi-index:d=64,r=3``). A class may
declare ``quick = {...}``: option values used by the ``quick`` profile unless the user sets them.
"""
from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ddbench.contracts.checkpoint import Checkpointer, CheckpointStore
from ddbench.contracts.deviations import Deviation
from ddbench.contracts.recipe import KD_EPOCHS, KD_PROTOCOL, QUICK_KD_BATCH, Recipe, crop_protocol
from ddbench.errors import DDBenchError, TaskDataError
from ddbench.vocab import Budget

Kind = Literal["classification", "regression"]


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclass
class Split:
    """Inputs ``x`` (N, *input_shape) and targets ``y`` (N,) int64 labels or float targets.

    The accessor every split has, held in memory or memory-mapped (:class:`MappedSplit`):
    :meth:`take` (the inputs of some examples), :meth:`batches` (all of them in order, a chunk at a
    time) and ``y`` (in memory either way). Code that reads a split only through them also runs on
    a task too large for memory (ImageNet-1K); ``x`` is the whole split as one tensor, which a
    mapped split refuses.
    """

    x: Tensor
    y: Tensor
    mapped: ClassVar[bool] = False

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))

    def subset(self, index: Tensor) -> Split:
        return Split(self.x[index], self.y[index])

    def take(self, index: Tensor) -> Tensor:
        """The inputs of the examples ``index`` (a 1-D index tensor), as models take them, on the split's device."""
        return self.x[index]

    def batches(self, size: int = 1024) -> Iterator[tuple[Tensor, Tensor]]:
        """Every example in order as ``(inputs, targets)`` chunks of at most ``size``."""
        for start in range(0, len(self), size):
            index = torch.arange(start, min(start + size, len(self)), device=self.y.device)
            yield self.take(index), self.y[index]


class MappedSplit(Split):
    """A split too large for memory: rows ``rows`` of a uint8 (M, C, H, W) image array in a ``.npy``
    file, memory-mapped (read from disk as pages are touched), and their labels ``y`` in memory.
    :meth:`take` reads the rows asked for and converts them on the split's device to floats in
    [0, 1] normalised by ``mean``/``std`` (the task's, ``info()``); ``x``, the whole split as one
    tensor, raises a one-line :class:`~ddbench.errors.TaskDataError` instead of filling memory."""

    mapped: ClassVar[bool] = True

    def __init__(self, path: str | Path, rows: Tensor, y: Tensor, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str = "cpu"):
        self.path, self.rows, self.y = str(path), rows.cpu(), y.to(device)
        self.mean, self.std, self.device = tuple(mean), tuple(std), torch.device(device)
        self.images = np.load(self.path, mmap_mode="r")

    @property
    def x(self) -> Tensor:
        raise TaskDataError(f"this split is memory-mapped ({len(self)} images in {self.path}) and is never one tensor: read it "
                            "with split.take(index) or split.batches(size) (docs/design.md §2)")

    @x.setter
    def x(self, value: Tensor) -> None:
        raise TaskDataError(f"the inputs of a memory-mapped split are its file {self.path}: they are not set")

    def __repr__(self) -> str:
        return f"MappedSplit({self.path!r}, {len(self)} rows, device={self.device})"

    def to(self, device: torch.device | str) -> MappedSplit:
        return MappedSplit(self.path, self.rows, self.y, self.mean, self.std, device)

    def subset(self, index: Tensor) -> MappedSplit:
        return MappedSplit(self.path, self.rows[index.cpu()], self.y[index], self.mean, self.std, self.device)

    def take(self, index: Tensor) -> Tensor:
        rows = self.rows[index.cpu()].numpy()
        order = np.argsort(rows, kind="stable")  # read the file front to back, then put the rows back in the asked order
        pixels = torch.empty((len(rows), *self.images.shape[1:]), dtype=torch.uint8)
        pixels[torch.from_numpy(order)] = torch.from_numpy(np.ascontiguousarray(self.images[rows[order]]))
        x = pixels.to(self.device).float().div_(255)
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.mean, device=self.device).view(shape)
        std = torch.tensor(self.std, device=self.device).view(shape)
        return (x - mean) / std


@dataclass
class TaskData:
    """The three fixed, seeded splits of a task. Validation is carved from train."""

    train: Split
    val: Split
    test: Split


@dataclass
class TaskView:
    """What a distiller and a learner see of a task: its description and the train/val splits.

    The test split is deliberately absent: nothing but the harness's final scoring touches it.
    ``info`` holds public facts a method may need (normalisation ``mean``/``std``, the DSA
    ``dsa_strategy``, the ``kind`` of data), ``options`` the task's own options.

    What a distiller may assume of ``train`` (and ``val``): inputs as models take them (normalised
    floats) on the run's device, labels ``y`` in memory. A task held in memory gives a plain
    :class:`Split` whose ``x`` is one tensor; a task too large for memory (ImageNet-1K) gives a
    :class:`MappedSplit`, read only through :meth:`Split.take`, :meth:`Split.batches` and
    :meth:`balanced_batch`, and only distillers that say they read it so
    (:attr:`Distiller.reads_mapped`) run on it: the harness skips the others with the reason.
    """

    name: str
    kind: Kind
    num_classes: int | None
    input_shape: tuple[int, ...]
    train: Split
    val: Split
    info: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> int:
        return math.prod(self.input_shape)

    def class_index(self, c: int) -> Tensor:
        """Indices of the train examples of class ``c``."""
        return torch.nonzero(self.train.y == c).flatten()

    def balanced_index(self, per_class: int, generator: torch.Generator) -> Tensor:
        """A seeded class-balanced draw: indices of ``per_class`` train examples of every class (all of
        a smaller class), class by class, each class's drawn uniformly without replacement."""
        picks = []
        for c in range(self.num_classes or 0):
            idx = self.class_index(c)
            picks.append(idx[torch.randperm(len(idx), generator=generator, device=idx.device)[:per_class]])
        return torch.cat(picks)

    def balanced_batch(self, per_class: int, generator: torch.Generator) -> Split:
        """The class-balanced batch of :meth:`balanced_index`, inputs read through :meth:`Split.take`: what
        a method that needs real examples of each class reads, held in memory or memory-mapped alike."""
        index = self.balanced_index(per_class, generator)
        return Split(self.train.take(index), self.train.y[index])


# --------------------------------------------------------------------------------------------
# Artifact and budget
# --------------------------------------------------------------------------------------------
@dataclass
class Artifact:
    """Everything a learner may train from.

    ``tensors``: named tensors; by convention ``x`` (inputs) and ``y`` (labels or targets), plus
    anything else training needs (a learned ``lr``, soft labels, a decoder...). The harness counts
    every element of every tensor here; a distiller never reports its own size.
    ``recipe``: overrides of the task's evaluation recipe that the method declares (augmentation,
    epochs, ``lr_from_artifact``); plain values only, never data.
    ``meta``: provenance and logs (loss curves, seeds). Learners must not train from it.
    ``teacher``: the teacher network the harness rebuilt from the artifact's own ``teacher.*``
    tensors (:func:`ddbench.budget.labels.build_teacher`), for learners training in the ``teacher`` label
    regime. Only tensors cross from a distiller's worker: a distiller cannot set it.
    """

    tensors: dict[str, Tensor]
    recipe: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    teacher: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def x(self) -> Tensor:
        return self.tensors["x"]

    @property
    def y(self) -> Tensor:
        return self.tensors["y"]

    def to(self, device: torch.device | str) -> Artifact:
        teacher = None if self.teacher is None else self.teacher.to(device)
        return Artifact({k: v.to(device) for k, v in self.tensors.items()}, dict(self.recipe), dict(self.meta), teacher)


# --------------------------------------------------------------------------------------------
# Run context and progress
# --------------------------------------------------------------------------------------------
class Progress:
    """Receives progress from long work. The harness shows it; tests read ``history``."""

    def __init__(self, callback: Callable[[int, int | None, dict[str, float]], None] | None = None):
        self.callback = callback
        self.history: list[tuple[int, int | None, dict[str, float]]] = []

    def update(self, step: int, total: int | None = None, **metrics: float) -> None:
        """Report that ``step`` of ``total`` is done, with current values such as ``loss``."""
        metrics = {k: float(v) for k, v in metrics.items()}
        self.history.append((step, total, metrics))
        if self.callback is not None:
            self.callback(step, total, metrics)


@dataclass
class RunContext:
    """What the harness hands a distiller besides the task, the budget and the learner.

    ``generator`` is a ``torch.Generator`` on ``device`` seeded with ``seed``: draw every random
    number from it (or from generators seeded from it) so that a seed fixes the artifact.
    ``profile`` is ``quick`` (CPU-sized) or ``full`` (the spec's sizes). Long loops should call
    ``should_stop()`` and end early when it says so, recording that in ``Artifact.meta``.
    ``open_view`` serves :meth:`source_view` (the harness's cell worker, or
    :func:`ddbench.run.suite.view_opener` in a test); ``None``: this context reads no other task.
    ``checkpoints`` is where :meth:`checkpointer` saves this distillation's state (the harness's
    store under the cache, keyed by the cell); ``None``: nothing is saved or restored.
    ``resumed_from``: the step a checkpoint restored (0: the run started from the beginning).
    """

    device: torch.device
    seed: int
    generator: torch.Generator
    progress: Progress = field(default_factory=Progress)
    profile: str = "full"
    time_limit_s: float | None = None
    cache_dir: Path = field(default_factory=lambda: Path(".ddbench/cache"))
    started: float = field(default_factory=time.perf_counter)
    open_view: Callable[[str], TaskView] | None = field(default=None, repr=False)
    checkpoints: CheckpointStore | None = field(default=None, repr=False)
    resumed_from: int = 0

    def should_stop(self) -> bool:
        return self.time_limit_s is not None and time.perf_counter() - self.started > self.time_limit_s

    def source_view(self, spec: str) -> TaskView:
        """The view of another task, e.g. a source to meta-train on: ``spec`` as on the command line
        (``mnist5k``, ``multi-index:d=32``), loaded under this run's profile with the run's plugins.
        Like the cell's own view it holds the train and validation splits only, never the test
        split; the harness records every ``spec`` read in the cell's result (``sources``)."""
        if self.open_view is None:
            raise DDBenchError(f"this run context reads no other task (asked for {spec!r}): build it with "
                               "open_view=ddbench.run.suite.view_opener(manager, profile, device).")
        return self.open_view(spec)

    def checkpointer(self, every: int | None = None, **objects: Any) -> Checkpointer:
        """Checkpoints of this distillation, so that a killed cell resumes where it stopped and ends
        with the very artifact of an uninterrupted run (a distiller that uses them sets
        :attr:`Distiller.resumable`). Name what the loop changes in place, restore once before the
        loop, offer a checkpoint after every iteration::

            ckpt = context.checkpointer(images=syn, opt=opt, generator=context.generator)
            done, saved = ckpt.restore()            # (0, {}) when there is nothing to resume
            history = saved.get("loss", [])
            while done < self.iterations and not context.should_stop():
                ...                                 # one iteration
                done += 1
                ckpt.step(done, loss=history)       # saved when the run's interval has passed

        ``objects``: tensors, generators (``torch.Generator``), optimisers, modules and other objects with
        ``state_dict()``/``load_state_dict()``, numpy and Python generators; ``step()``'s values:
        tensors, numbers, strings, lists, tuples and dictionaries of them. torch's, numpy's and
        Python's global generators are saved and restored too. ``every``: also save every that
        many steps. See :mod:`ddbench.contracts.checkpoint`."""
        def restored(step: int) -> None:
            self.resumed_from = step

        return Checkpointer(self.checkpoints, self.device, every, restored, **objects)

    def fork(self, offset: int) -> torch.Generator:
        """A new generator on the device, seeded deterministically from this run's seed."""
        return torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + offset)


@dataclass(frozen=True)
class Published:
    """A published result of a method: test accuracy (%) mean ± std on ``dataset`` at ``ipc``, beside
    the random-subset baseline the same paper reports, and where the numbers come from. ``zca``: the
    published run whitened its inputs (ZCA, docs/methods.md §1), so ``ddbench reproduce`` runs it on
    the task with option ``zca=true``."""

    dataset: str
    ipc: int
    accuracy: float
    std: float
    random: float
    random_std: float
    source: str
    zca: bool = False

    @property
    def gap(self) -> float:
        """Accuracy over the random subset, as published."""
        return self.accuracy - self.random


# --------------------------------------------------------------------------------------------
# The three interfaces
# --------------------------------------------------------------------------------------------
class Component:
    """Shared by tasks, learners and distillers: a public name, a description, quick options."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    quick: ClassVar[dict[str, Any]] = {}


class Task(Component, ABC):
    """Data and how to judge on it.

    Subclasses set ``kind``, ``metric``, ``default_learner`` (the registered name of the learner
    its cells train unless a suite names another) and implement :meth:`load` and :meth:`recipe`
    (:meth:`info` optionally). ``load`` must give the same splits for the same options.
    """

    kind: ClassVar[Kind] = "classification"
    metric: ClassVar[str] = "accuracy"
    default_learner: ClassVar[str]
    higher_is_better: ClassVar[dict[str, bool]] = {"accuracy": True, "r2": True, "mse": False}
    """Which way each metric of the task is better: those :meth:`score` returns and those of
    :meth:`artifact_metrics` that may be compared (a subclass extends it, e.g.
    ``{**Task.higher_is_better, "alignment": True}``). The harness stores it with every result, so
    boards rank, and ``ddbench compare --fail-on`` judges, from the records alone."""
    leaderboard_columns: ClassVar[tuple[str, ...]] = ()
    """The extra metrics and diagnostics (keys of the result's ``extra``) shown as board columns,
    beside the harness's own; every other extra stays in ``results.json`` only."""
    reference_dataset: ClassVar[str | None] = None
    """The dataset of the published tables this task's numbers compare with (``mnist``,
    ``fashion-mnist``, ``cifar10``...), for ``ddbench reproduce``; ``None``: none. A task that holds
    only part of that dataset says so in its ``description``."""
    num_classes: int | None
    input_shape: tuple[int, ...]

    def prepare_data(self) -> None:
        """Make the data ready to load: find its files, download them where allowed, build caches.
        A problem is a one-line :class:`~ddbench.errors.TaskDataError`; ``ddbench run`` calls this for
        every task of a suite before any cell runs. Default: nothing (embedded or generated data)."""

    @abstractmethod
    def load(self) -> TaskData:
        """The train / validation / test splits (CPU tensors; the harness moves them with :meth:`to_device`)."""

    def to_device(self, split: Split, device: torch.device | str) -> Split:
        """A split of :meth:`load` as models take it, on ``device``. Default: moved there. A task
        that keeps compact inputs (uint8 pixels) converts them here, on the device."""
        return split.to(device)

    @abstractmethod
    def recipe(self, profile: str) -> Recipe:
        """The default evaluation recipe for ``profile`` (``quick`` or ``full``)."""

    def common_recipe(self, profile: str) -> Recipe | None:
        """The one recipe every row of the task's ``common`` board trains with under ``profile``:
        its :data:`~ddbench.vocab.PROTOCOL_FIELDS` replace what an artifact declares
        (docs/design.md §4). ``None``, the default: the task has no common protocol, only
        ``native``; a task class that does not override this method gets no ``common`` cells."""
        return None

    def teacher_recipe(self, profile: str) -> Recipe:
        """The student recipe of artifacts in the ``teacher`` and ``soft-bank`` label regimes
        (docs/labels.md §3): :meth:`recipe` with the distillation protocol's optimiser, schedule,
        rates, temperature, batch and mixup (:data:`ddbench.contracts.recipe.KD_PROTOCOL`), and 400 epochs in
        the full profile (the quick profile keeps :meth:`recipe`'s epochs and trains on batches of
        :data:`~ddbench.contracts.recipe.QUICK_KD_BATCH`), and on images the protocol's padded random crop and
        flip (:func:`ddbench.contracts.recipe.crop_protocol`)."""
        base = self.recipe(profile)
        return base.updated({**KD_PROTOCOL, "epochs": KD_EPOCHS if profile == "full" else base.epochs,
                             **({"batch_size": QUICK_KD_BATCH} if profile == "quick" else {}),
                             **crop_protocol(self.info(), self.input_shape)})

    def info(self) -> dict[str, Any]:
        """Public facts for methods: normalisation, DSA strategy, data kind."""
        return {}

    def score(self, pred: Tensor, y: Tensor) -> dict[str, float]:
        """Metrics of predictions ``pred`` (logits or values) against targets ``y``.

        Accuracy is in percent (as published tables); R^2 = 1 - MSE / Var(y), with MSE beside it.
        """
        if self.kind == "classification":
            return {"accuracy": 100.0 * (pred.argmax(1) == y).float().mean().item()}
        mse = torch.mean((pred.flatten() - y) ** 2).item()
        var = torch.var(y, unbiased=False).item()
        return {"r2": 1.0 - mse / var, "mse": mse}

    def artifact_metrics(self, artifact: Artifact) -> dict[str, float]:
        """Task-specific diagnostics of an artifact (needs the task's hidden truth)."""
        return {}


class Learner(Component, ABC):
    """A model family plus its training recipe.

    Required: :meth:`build` and :meth:`fit`. Capabilities the harness and methods rely on, each with
    a default here:

    - :meth:`fit_ensemble`: train the harness's K evaluation nets (default: :meth:`fit` one by one);
      a learner may train them together (a vmapped ensemble) and say so in the returned mode.
    - :meth:`embed` with ``supports_embedding = True``: a feature map of the inputs (DM's embedding,
      herding's features); a distiller that needs it asks in :meth:`Distiller.supports`.
    - :meth:`predict`: outputs in chunks without gradients.

    ``recipe_options``: the learner-specific :attr:`Recipe.options` it reads, with their types (an
    artifact may declare the integer, string and boolean ones; docs/threat-model.md).
    ``input_tensors``: artifact tensors it can train from; an artifact must hold one of them.
    ``label_regimes``: the label regimes it trains in (docs/labels.md); the harness refuses an
    artifact of another regime before training.
    """

    recipe_options: ClassVar[dict[str, type]] = {}
    input_tensors: ClassVar[tuple[str, ...]] = ("x",)
    supports_embedding: ClassVar[bool] = False
    label_regimes: ClassVar[tuple[str, ...]] = ("hard", "soft")
    """The label regimes (:data:`ddbench.vocab.REGIMES`) whose artifacts it can train from."""
    trains_stages: ClassVar[bool] = False
    """Whether :meth:`fit` trains a staged artifact stage by stage (:mod:`ddbench.budget.stages`); the
    harness refuses a staged artifact for a learner that does not."""

    @abstractmethod
    def build(self, task: TaskView, seed: int) -> nn.Module:
        """A fresh model initialised from ``seed`` alone (no global RNG state)."""

    @abstractmethod
    def fit(self, model: nn.Module, artifact: Artifact, recipe: Recipe, generator: torch.Generator) -> nn.Module:
        """Train ``model`` on the artifact's tensors with ``recipe``; randomness from ``generator``."""

    def fit_ensemble(self, models: Sequence[nn.Module], artifact: Artifact, recipe: Recipe,
                     generators: Sequence[torch.Generator]) -> str:
        """Train the K ``models`` (model k from ``generators[k]``) exactly as :meth:`fit` would one by
        one, and return how: ``"sequential"`` here; e.g. ``"ensemble"`` where trained together."""
        for model, generator in zip(models, generators, strict=True):
            self.fit(model, artifact, recipe, generator)
        return "sequential"

    def embed(self, model: nn.Module, x: Tensor) -> Tensor:
        """Features of ``x`` (N, F) under ``model``; only when ``supports_embedding`` is True."""
        raise NotImplementedError(f"learner {self.name!r} has no embedding (supports_embedding is False).")

    def predict(self, model: nn.Module, x: Tensor, batch_size: int = 2048) -> Tensor:
        """Outputs (logits or values) for ``x``, in chunks, without gradients."""
        model.eval()
        with torch.no_grad():
            out = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
        model.train()
        return out


class Distiller(Component, ABC):
    """Turns a task's train split into an :class:`Artifact` within a :class:`Budget`.

    Required: :meth:`distill`. :meth:`supports` (default: everything) sees the task and the learner
    the cell trains, so a mismatch is a skip with a reason, not an error halfway through.
    ``budget_exempt`` marks reference rows (the full train split) that the budget does not bind.
    """

    budget_exempt: ClassVar[bool] = False
    in_every_suite: ClassVar[bool] = True
    """Whether a suite that names no distillers runs it; ``False`` for one that needs an option the
    user must give (the ``file`` distiller's ``path``)."""
    reads_mapped: ClassVar[bool] = False
    """Whether the method reads the train and validation splits only through the accessor
    (:meth:`Split.take`, :meth:`Split.batches`, :meth:`TaskView.balanced_batch`), so that it runs on a
    memory-mapped task (:class:`MappedSplit`); the harness skips the others there with the reason."""
    resumable: ClassVar[bool] = False
    """Whether :meth:`distill` checkpoints through :meth:`RunContext.checkpointer`, so that a killed
    cell resumes to the artifact of an uninterrupted run; the conformance kit checks that it does."""
    published: ClassVar[tuple[Published, ...]] = ()
    """The method's published accuracies (docs/methods.md §11), which ``ddbench reproduce`` compares with."""
    official_code: ClassVar[str] = ""
    """What the method was compared with: its official repository at a commit and the files read
    (or why there is none); shown above its :attr:`deviations` in docs/methods.md."""
    deviations: ClassVar[tuple[Deviation, ...]] = ()
    """Every place the method departs from that official code (:class:`~ddbench.contracts.deviations.Deviation`);
    the harness records those that apply to a cell, and boards footnote the cell's row with them."""

    def supports(self, task: TaskView, learner: Learner) -> str | None:
        """``None`` if the method applies to ``task`` with ``learner``, else the reason it does not."""
        return None

    @abstractmethod
    def distill(self, task: TaskView, budget: Budget, learner: Learner, context: RunContext) -> Artifact:
        """Build the artifact. Never touches test data (it is not in ``task``).

        A ``budget_exempt`` distiller is passed ``None`` and declares ``budget: Budget | None``.
        """


INTERFACES: dict[str, type] = {"task": Task, "learner": Learner, "distiller": Distiller}
