"""The harness loop: for every (task, distiller, budget, seed) cell, distil in a fresh worker
process, admit the artifact at the boundary, train the task's learner on it K times with explicit
seeds, and score on the test split.

The distiller runs in a cell worker (:mod:`ddbench.worker`) that holds the task's train and
validation splits only; what crosses back is the artifact's tensors (safetensors bytes) and its
declared recipe and meta (JSON). The harness counts and validates those tensors, checks the
declared recipe (:func:`ddbench.artifact.admit`), and trains its own learner instance,
which the distiller never saw, on them; ``meta`` is recorded but never reaches the learner.
A failing cell (a plugin that raises, exits, crashes or overruns its time limit; an over-budget or
NaN artifact) is recorded with its error and a capped traceback; the run goes on.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import tempfile
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddbench import worker
from ddbench.artifact import admit, compression, save, with_labels
from ddbench.errors import SuiteError, one_line
from ddbench.interfaces import Artifact, Budget, Learner, Task, TaskData, TaskView
from ddbench.plugins import PluginManager, check_options, instantiate
from ddbench.provenance import provenance
from ddbench.recipe import Recipe
from ddbench.suite import DistillerEntry, Suite


RUN_LENGTH_META = ("iterations", "stopped_early")
"""Keys of ``Artifact.meta`` kept in the results: how long a distiller ran (a time limit may cut it short)."""
RESULTS_VERSION = 1
"""Bumped when a change to ddbench changes results; part of every cell key, so a store never
passes off a result of another version as current (0: results stored before keys carried it)."""
TRACEBACK_CHARS = 8000  # a stored traceback keeps its first and last lines up to this size
HEADER_BYTES = 1 << 20  # room for the safetensors header beyond 8 bytes per budgeted scalar


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SuiteError("--device cuda was requested but no CUDA device is available: use --device auto or cpu.")
    if device != "cpu" and not device.startswith("cuda"):
        raise SuiteError(f"unknown device {device!r}: use auto, cpu or cuda[:N].")
    return torch.device(device)


def task_view(task: Task, data: TaskData, device: torch.device | str, name: str | None = None,
              options: dict[str, Any] | None = None) -> TaskView:
    """What a distiller sees of a loaded task: train and validation on ``device``, never the test split."""
    return TaskView(name or task.name, task.kind, task.num_classes, tuple(task.input_shape), data.train.to(device),
                    data.val.to(device), task.info(), dict(options or {}))


@dataclass
class Cell:
    """One unit of work: a distiller on a task at a budget with one distillation seed."""

    task: str
    task_options: dict[str, Any]
    distiller: str
    distiller_options: dict[str, Any]
    budget: Budget | None  # None: budget-exempt reference row
    seed: int
    eval_seeds: list[int]
    learner: str
    learner_options: dict[str, Any]
    profile: str
    time_limit_s: float | None = None
    device_type: str = "cpu"
    results_version: int = RESULTS_VERSION

    @property
    def label(self) -> str:
        return f"{self.task} / {self.distiller} / {self.budget or 'full'} / seed {self.seed}"

    def config(self) -> dict[str, Any]:
        d = asdict(self)
        d["budget"] = str(self.budget) if self.budget else None
        return d

    def key(self) -> str:
        """A stable hash of everything that defines the cell's result."""
        return hashlib.sha256(json.dumps(self.config(), sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class CellResult:
    cell: Cell
    status: str  # ok | failed | skipped
    metric: str = ""
    values: list[float] = field(default_factory=list)  # headline metric per eval seed
    extra: dict[str, float] = field(default_factory=dict)  # other metrics (mean over seeds)
    stored_params: int = 0
    stored_bytes: int = 0
    by_tensor: dict[str, int] = field(default_factory=dict)
    by_dtype: dict[str, int] = field(default_factory=dict)
    compression: float = 0.0
    distill_s: float = 0.0
    eval_s: float = 0.0
    eval_mode: str = ""  # how the K evaluation nets trained: "ensemble" (vmapped) or "sequential[: reason]"
    peak_mb: float = 0.0
    device: str = ""
    error: str = ""
    traceback: str = ""
    random_ref: float | None = None  # mean metric of `random` at this budget under this cell's recipe
    recipe: dict[str, Any] = field(default_factory=dict)  # the evaluation recipe the nets trained with

    @property
    def gain(self) -> float | None:
        """Metric minus the random-subset reference (same budget, seed and recipe)."""
        return None if self.random_ref is None or not self.values else self.mean - self.random_ref

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else float("nan")

    @property
    def std(self) -> float:
        return statistics.pstdev(self.values) if len(self.values) > 1 else 0.0


def capped(text: str, limit: int = TRACEBACK_CHARS) -> str:
    """``text`` cut to about ``limit`` characters, keeping its start and its end (a traceback's cause)."""
    if len(text) <= limit:
        return text
    head = limit // 4
    return f"{text[:head]}\n[... {len(text) - limit} characters cut ...]\n{text[-(limit - head):]}"


class Harness:
    """Runs suites of cells with the plugins of ``manager`` on ``device``.

    Distillations run in worker processes (:mod:`ddbench.worker`), which import the main module
    of the program, as multiprocessing does: a script that drives a harness itself guards its
    entry point with ``if __name__ == "__main__":``.
    """

    def __init__(self, manager: PluginManager, device: str = "auto", cache_dir: Path | str = ".ddbench/cache",
                 on_progress: Callable[[str, int, int | None, dict[str, float]], None] | None = None,
                 artifact_dir: Path | str | None = None):
        self.manager = manager
        self.device = resolve_device(device)
        self.cache_dir = Path(cache_dir)
        self.artifact_dir = Path(artifact_dir) if artifact_dir is not None else None
        self.on_progress = on_progress
        self._tasks: dict[str, tuple[Task, TaskView, Any]] = {}
        self._views: dict[str, worker.ViewSpec] = {}
        self._view_dir: Path | None = None
        self._random_refs: dict[str, float] = {}

    # -- building ----------------------------------------------------------------------------
    def task(self, name: str, options: dict[str, Any], profile: str) -> tuple[Task, TaskView, Any]:
        """The task, the view distillers get (train/val on the device) and the test split."""
        key = json.dumps([name, options, profile], sort_keys=True, default=str)
        if key not in self._tasks:
            task = instantiate(self.manager.get("task", name), options, profile)
            data = task.load()
            view = task_view(task, data, self.device, name, options)
            self._tasks[key] = (task, view, data.test.to(self.device))
        return self._tasks[key]

    def _view_spec(self, cell: Cell, view: TaskView) -> worker.ViewSpec:
        """The file a worker reads the view's train and validation splits from, written once per task."""
        key = json.dumps([cell.task, cell.task_options, cell.profile], sort_keys=True, default=str)
        if key not in self._views:
            if self._view_dir is None:
                self._view_dir = Path(tempfile.mkdtemp(prefix="ddbench-views-"))
                weakref.finalize(self, shutil.rmtree, self._view_dir, True)
            path = self._view_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
            self._views[key] = worker.write_view(view, path)
        return self._views[key]

    def cells(self, suite: Suite) -> Iterator[Cell]:
        """Expand a suite into cells, validating every name up front."""
        distillers = suite.distillers
        if distillers is None:
            distillers = [DistillerEntry(n) for n in self.manager.names("distiller")]
        for entry in distillers:
            check_options(self.manager.get("distiller", entry.name), entry.options)
        for t in suite.tasks:
            task_cls = self.manager.get("task", t.name)
            check_options(task_cls, t.options)
            learner = t.learner or task_cls.default_learner
            check_options(self.manager.get("learner", learner), t.learner_options)
            if task_cls.kind == "regression" and any(b.kind == "ipc" for b in t.budgets):
                raise SuiteError(f"task {t.name!r} is regression: ipc budgets do not apply; use params=N.")
            if not t.budgets:
                raise SuiteError(f"task {t.name!r} has no budgets: give at least one, e.g. ipc=10 or params=5000.")
            for d in distillers:
                exempt = self.manager.get("distiller", d.name).budget_exempt
                for budget in ([None] if exempt else t.budgets):
                    for seed in suite.distill_seeds:
                        yield Cell(t.name, t.options, d.name, d.options, budget, seed, list(range(suite.eval_seeds)),
                                   learner, t.learner_options, suite.profile, suite.time_limit_s, self.device.type)

    # -- running -----------------------------------------------------------------------------
    def run(self, suite: Suite, on_result: Callable[[CellResult], None] | None = None,
            skip: Callable[[Cell], bool] | None = None) -> list[CellResult]:
        """Run every cell of ``suite``; ``on_result`` sees each result as soon as it is final."""
        cells = list(self.cells(suite))
        worker.mp_context(self.manager.modules())  # the fork server imports the plugins while tasks load
        results = []
        for i, cell in enumerate(cells):
            if skip is not None and skip(cell):
                continue
            result = self.run_cell(cell, f"[{i + 1}/{len(cells)}]")
            results.append(result)
            if on_result is not None:
                on_result(result)
        return results

    def run_cell(self, cell: Cell, tag: str = "") -> CellResult:
        """Distil in a worker, admit the artifact, evaluate one cell; any failure becomes a failed result."""
        result = CellResult(cell, "failed", device=self._device_name())
        try:
            task, view, test = self.task(cell.task, cell.task_options, cell.profile)
            distiller = self.manager.get("distiller", cell.distiller)
            reply = self._distill(distiller, cell.distiller_options, cell, view,
                                  None if distiller.budget_exempt else cell.budget, cell.time_limit_s, tag)
            result.distill_s, result.peak_mb = reply.distill_s, reply.peak_mb
            if reply.status != "ok":
                result.status, result.error, result.traceback = reply.status, reply.error[:1000], capped(reply.traceback)
                return result
            learner: Learner = instantiate(self.manager.get("learner", cell.learner), cell.learner_options, cell.profile)
            artifact, storage = admit(Artifact(reply.tensors, reply.recipe), view, None if distiller.budget_exempt else cell.budget,
                                      cell.distiller, type(learner))
            result.stored_params, result.stored_bytes = storage.scalars, storage.bytes
            result.by_tensor, result.by_dtype = storage.by_tensor, storage.by_dtype
            result.compression = compression(view, storage)
            recipe = task.recipe(cell.profile).updated(artifact.recipe)
            result.recipe = recipe.as_dict()
            if self.artifact_dir is not None:
                info = {"cell": cell.config(), "key": cell.key(), "provenance": provenance(self.manager),
                        "recipe": result.recipe, "storage": asdict(storage)}
                save(Artifact(artifact.tensors, artifact.recipe, reply.meta), self.artifact_dir / f"{cell.task}-{cell.distiller}-{cell.key()}", info)
            start = time.perf_counter()
            scores, result.eval_mode = self._scores(task, view, test, learner, artifact, recipe, cell)
            result.eval_s = time.perf_counter() - start
            result.metric = task.metric
            result.values = [s[task.metric] for s in scores]
            for key in scores[0]:
                if key != task.metric:
                    result.extra[key] = statistics.fmean(s[key] for s in scores)
            result.extra.update(task.artifact_metrics(Artifact(artifact.tensors, artifact.recipe, reply.meta)))
            result.extra.update(run_length(reply.meta))
            result.status = "ok"
            result.random_ref = self._random_reference(task, view, test, learner, cell, artifact.recipe, result)
        except Exception as exc:  # noqa: BLE001 - a failing cell never takes the run down
            result.status = "failed"
            result.error = one_line(exc)[:1000]
            result.traceback = capped(traceback.format_exc())
        return result

    def _device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return "cpu"

    def _distill(self, distiller: type, options: dict[str, Any], cell: Cell, view: TaskView, budget: Budget | None,
                 time_limit_s: float | None, tag: str) -> worker.DistillReply:
        """One distillation in a fresh worker (:func:`ddbench.worker.distill`)."""
        def report(step: int, total: int | None, metrics: dict[str, float]) -> None:
            if self.on_progress is not None and tag:
                self.on_progress(f"{tag} {cell.label}", step, total, metrics)

        request = worker.DistillRequest(distiller, options, self.manager.get("learner", cell.learner), cell.learner_options,
                                        cell.profile, self._view_spec(cell, view), budget, cell.seed, str(self.device),
                                        time_limit_s, str(self.cache_dir), torch.get_num_threads())
        max_bytes = None if budget is None else budget.scalars(view) * 8 + HEADER_BYTES
        return worker.distill(request, report, max_bytes)

    def _scores(self, task: Task, view: TaskView, test: Any, learner: Learner, artifact: Artifact, recipe: Recipe,
                cell: Cell) -> tuple[list[dict[str, float]], str]:
        """Train a fresh learner per evaluation seed on the artifact; score each on test. Also returns
        how they were trained: a learner with ``fit_ensemble(models, artifact, recipe, generators)
        -> str`` trains the K models itself (together where it can) and says how, e.g. ``ensemble``."""
        artifact = with_labels(artifact.to(self.device), view.num_classes)
        models = [learner.build(view, seed).to(self.device) for seed in cell.eval_seeds]
        generators = [torch.Generator(self.device).manual_seed(seed) for seed in cell.eval_seeds]
        fit_ensemble = getattr(learner, "fit_ensemble", None)
        if fit_ensemble is not None:  # K nets at once (a vmapped ensemble), same results as one by one
            mode = fit_ensemble(models, artifact, recipe, generators)
        else:
            for model, generator in zip(models, generators):
                learner.fit(model, artifact, recipe, generator)
            mode = "sequential"
        return [task.score(learner.predict(model, test.x), test.y) for model in models], mode

    def _random_reference(self, task: Task, view: TaskView, test: Any, learner: Learner, cell: Cell,
                          recipe: dict[str, Any], result: CellResult) -> float | None:
        """The ``random`` baseline at this cell's budget and seed, trained with this cell's recipe
        (augmentation, epochs; a learned lr or implied labels do not carry over). Memoised, so a
        suite without ``random`` still gets its gain column at the cost of one evaluation per recipe."""
        if cell.budget is None or "random" not in self.manager.names("distiller"):
            return None
        overrides = {k: v for k, v in recipe.items() if k not in ("lr_from_artifact", "labels")}
        key = json.dumps([cell.task, cell.task_options, str(cell.budget), cell.seed, cell.eval_seeds, cell.learner,
                          cell.learner_options, cell.profile, overrides], sort_keys=True, default=str)
        if cell.distiller == "random" and not overrides:
            self._random_refs[key] = result.mean
        if key not in self._random_refs:
            reply = self._distill(self.manager.get("distiller", "random"), {}, cell, view, cell.budget, None, "")
            try:
                if reply.status != "ok":
                    return None
                artifact, _ = admit(Artifact(reply.tensors, overrides), view, cell.budget, "random", type(learner))
                scores, _ = self._scores(task, view, test, learner, artifact, task.recipe(cell.profile).updated(overrides), cell)
            except Exception:  # noqa: BLE001 - the reference is a column, not the cell
                return None
            self._random_refs[key] = statistics.fmean(s[task.metric] for s in scores)
        return self._random_refs[key]


def run_length(meta: dict[str, Any]) -> dict[str, float]:
    """The :data:`RUN_LENGTH_META` numbers of an artifact's meta (others, and non-numbers, are left out)."""
    out = {}
    for key in RUN_LENGTH_META:
        value = meta.get(key)
        if isinstance(value, (bool, int, float)):
            out[key] = float(value)
    return out
