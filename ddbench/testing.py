"""The conformance kit: check a distiller against ddbench's interface and budget rules.

A pytest plugin (registered under the ``pytest11`` entry-point group, so installing ddbench is
enough) and plain functions. A plugin author checks a distiller in a few lines::

    from my_plugin import MyDistiller

    def test_conformance(ddbench_check):
        ddbench_check(MyDistiller)          # raises ConformanceError naming every broken rule

:func:`check_distiller` runs the distiller on tiny tasks that ship with the kit (no downloads): a
3-class 8x8 image task and an 8-dimensional regression task. Each failure names the rule (the keys
of :data:`RULES`) and how to fix it. ``pytest --ddbench-device cuda`` runs the checks on a GPU.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pickle
import random
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ddbench.artifact import admit, content_hash, count_storage, with_labels
from ddbench.errors import BudgetError, DDBenchError, PluginError
from ddbench.interfaces import (
    Artifact, Budget, Distiller, Learner, Progress, Recipe, RunContext, Split, Task, TaskData, TaskView,
)

RULES: dict[str, str] = {
    "interface": "the class subclasses ddbench.Distiller, has a valid `name` and implements distill()",
    "importable": "the class is defined at module level of an importable module, so a cell worker can load it",
    "supports": "supports(view) returns None or a reason string, and accepts at least one kit task",
    "runs": "distill() completes on every budget it can meet",
    "returns-artifact": "distill() returns a ddbench.Artifact of torch.Tensors",
    "on-device": "every artifact tensor is on context.device",
    "finite": "no artifact tensor holds NaN or infinite values",
    "valid": "ddbench.artifact.admit accepts the artifact: its tensors validate and its recipe declares only choices",
    "within-budget": "the artifact stores no more scalars than the budget allows",
    "seeded": "the same seed gives the same artifact (bitwise on CPU), whatever the global RNG state",
    "progress": "distill() reports progress through context.progress.update() at least once",
    "read-only-task": "distill() leaves the task's train and validation tensors unchanged",
    "budget-error": "a budget the method cannot meet raises ddbench.errors.BudgetError",
    "trainable": "the task's learner trains on the artifact with the recipe the artifact declares",
}
"""Every rule the kit checks, by the id that failure messages start with."""

TRAIN_EPOCHS = 2  # the ``trainable`` rule checks compatibility, not accuracy
SEEDED_RTOL = 1e-4  # off the CPU, kernels may be non-deterministic: compare with a tolerance


# --------------------------------------------------------------------------------------------
# Tiny tasks that ship with the kit
# --------------------------------------------------------------------------------------------
class TinyClassification(Task):
    """3 classes of noisy 8x8 one-channel prototypes (generated, about standardised)."""

    name = "tiny-classification"
    description = "conformance kit: 3 classes of noisy 8x8 prototypes (generated)"
    kind = "classification"
    metric = "accuracy"
    default_learner = "convnet"
    num_classes = 3
    input_shape = (1, 8, 8)

    def __init__(self, per_class: int = 20, seed: int = 0):
        self.per_class, self.seed = per_class, seed

    def load(self) -> TaskData:
        g = torch.Generator().manual_seed(self.seed)
        prototypes = torch.randn(self.num_classes, *self.input_shape, generator=g)

        def split(per_class: int) -> Split:
            y = torch.arange(self.num_classes).repeat(per_class)
            return Split(prototypes[y] + 0.5 * torch.randn(len(y), *self.input_shape, generator=g), y)

        return TaskData(split(self.per_class), split(max(1, self.per_class // 4)), split(self.per_class))

    def recipe(self, profile: str) -> Recipe:
        return Recipe(epochs=20, dsa_strategy="color_crop_cutout_scale_rotate")

    def info(self) -> dict[str, Any]:
        return {"mean": [0.0], "std": [1.0], "dsa_strategy": "color_crop_cutout_scale_rotate", "data": "image"}


class TinyRegression(Task):
    """y = relu(u^T x) + 0.1 noise for Gaussian x in 8 dimensions (generated)."""

    name = "tiny-regression"
    description = "conformance kit: 8-d single-index regression (generated)"
    kind = "regression"
    metric = "r2"
    default_learner = "two-layer"
    num_classes = None
    input_shape = (8,)

    def __init__(self, n: int = 160, seed: int = 0):
        self.n, self.seed = n, seed

    def load(self) -> TaskData:
        g = torch.Generator().manual_seed(self.seed)
        u = torch.randn(self.input_shape[0], generator=g)
        u = u / u.norm()

        def split(n: int) -> Split:
            x = torch.randn(n, *self.input_shape, generator=g)
            return Split(x, torch.relu(x @ u) + 0.1 * torch.randn(n, generator=g))

        return TaskData(split(self.n), split(max(1, self.n // 4)), split(self.n))

    def recipe(self, profile: str) -> Recipe:
        return Recipe(epochs=0, batch_size=0, options={"rho": 1.0, "ridge": 1e-3})

    def info(self) -> dict[str, Any]:
        return {"data": "vector", "d": self.input_shape[0]}


@dataclass
class KitTask:
    """A task the kit runs a distiller on: budgets it must meet and one it cannot (or ``None``).

    ``learner`` is a registered learner (``"name"`` or ``"name:k=v"``) or a :class:`Learner`;
    ``None`` means the task's ``default_learner``.
    """

    task: Task
    budgets: tuple[Budget, ...]
    impossible: Budget | None
    learner: str | Learner | None = None


def tiny_classification(budgets: Sequence[str] = ("ipc=1", "params=400"), impossible: str | None = "params=100",
                        learner: str | Learner | None = None) -> KitTask:
    """The kit's classification task; ``params=100`` is below one 65-scalar example per class."""
    return KitTask(TinyClassification(), tuple(map(Budget.parse, budgets)), _budget(impossible), learner)


def tiny_regression(budgets: Sequence[str] = ("params=90",), impossible: str | None = "params=5",
                    learner: str | Learner | None = None) -> KitTask:
    """The kit's regression task; ``params=5`` is below one 9-scalar example."""
    return KitTask(TinyRegression(), tuple(map(Budget.parse, budgets)), _budget(impossible), learner)


def registered_task(spec: str, budgets: Sequence[str], impossible: str | None = None,
                    learner: str | Learner | None = None, profile: str = "quick") -> KitTask:
    """A task from the installed plugins, e.g. ``registered_task("multi-index:d=8,r=1,n=400", ["params=90"])``."""
    from ddbench.plugins import get_plugin_manager, instantiate
    from ddbench.suite import parse_named

    name, options = parse_named(spec)
    task = instantiate(get_plugin_manager().get("task", name), options, profile)
    return KitTask(task, tuple(map(Budget.parse, budgets)), _budget(impossible), learner)


def _budget(text: str | None) -> Budget | None:
    return None if text is None else Budget.parse(text)


def task_view(task: Task, device: torch.device | str = "cpu") -> TaskView:
    """What a distiller sees of ``task`` (train and validation on ``device``), as the harness builds it."""
    from ddbench import harness

    return harness.task_view(task, task.load(), device)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Failure:
    """One broken rule: where it broke, what happened and how to fix it."""

    rule: str
    where: str
    detail: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.where}: {self.detail} Fix: {self.fix}"


@dataclass
class Case:
    """One distillation the kit ran: a task at a budget (``impossible`` marks the unmeetable one)."""

    task: str
    budget: str
    status: str  # ok | failed | skipped
    stored_scalars: int | None = None
    limit: int | None = None
    progress_updates: int = 0
    seconds: float = 0.0
    note: str = ""


@dataclass
class ConformanceReport:
    """What :func:`check_distiller` ran and found."""

    distiller: str
    device: str
    cases: list[Case] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def rules_broken(self) -> list[str]:
        return sorted({f.rule for f in self.failures})

    def summary(self) -> str:
        lines = [f"distiller {self.distiller!r} on {self.device}:"]
        for c in self.cases:
            size = f", {c.stored_scalars}/{c.limit} scalars" if c.stored_scalars is not None else ""
            lines.append(f"  {c.task} {c.budget}: {c.status}{size}, {c.progress_updates} progress updates, "
                         f"{c.seconds:.2f} s{f' ({c.note})' if c.note else ''}")
        return "\n".join(lines)


class ConformanceError(AssertionError):
    """A distiller broke one or more conformance rules; ``failures`` lists them."""

    def __init__(self, report: ConformanceReport):
        self.report = report
        self.failures = report.failures
        lines = "\n".join(f"  {f}" for f in report.failures)
        super().__init__(
            f"distiller {report.distiller!r} broke {len(report.rules_broken)} conformance rule(s) "
            f"({', '.join(report.rules_broken)}) on {report.device}:\n{lines}"
        )


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------
def check_distiller(distiller: type[Distiller], options: dict[str, Any] | None = None, *,
                    tasks: Sequence[KitTask] | None = None, device: torch.device | str = "cpu",
                    profile: str = "quick", seed: int = 0, cache_dir: Path | str | None = None) -> ConformanceReport:
    """Run ``distiller`` (a class, built with ``options`` over its ``quick`` values in the ``quick``
    profile) on the kit's tasks and check every rule of :data:`RULES`.

    Returns the :class:`ConformanceReport`; raises :class:`ConformanceError` listing every broken rule.
    """
    report = conformance(distiller, options, tasks=tasks, device=device, profile=profile, seed=seed, cache_dir=cache_dir)
    if not report.passed:
        raise ConformanceError(report)
    return report


def conformance(distiller: type[Distiller], options: dict[str, Any] | None = None, *,
                tasks: Sequence[KitTask] | None = None, device: torch.device | str = "cpu",
                profile: str = "quick", seed: int = 0, cache_dir: Path | str | None = None) -> ConformanceReport:
    """As :func:`check_distiller`, but return the report whatever it found."""
    from ddbench.harness import resolve_device
    from ddbench.plugins import Registry, instantiate

    device = resolve_device(device) if isinstance(device, str) else device
    name = getattr(distiller, "name", getattr(distiller, "__name__", repr(distiller)))
    report = ConformanceReport(str(name), str(device))
    try:
        Registry("distiller").register(distiller, "conformance-kit")
        method: Distiller = instantiate(distiller, options or {}, profile)
    except DDBenchError as exc:
        report.failures.append(Failure("interface", f"class {distiller!r}", str(exc),
                                       "subclass ddbench.Distiller, set `name`, implement distill(); see docs/write-a-distiller.md."))
        return report
    try:
        pickle.dumps(distiller)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        report.failures.append(Failure("importable", f"class {distiller.__qualname__}", f"the class cannot be sent to a cell worker ({exc}).",
                                       "define the distiller class at module level of an importable module (not inside a function)."))
    run = _Runner(method, report, device, profile, seed, Path(cache_dir) if cache_dir else Path(".ddbench/cache"))
    for kit_task in (tasks if tasks is not None else [tiny_classification(), tiny_regression()]):
        run.task(kit_task)
    if report.cases and all(c.status == "skipped" for c in report.cases):
        reasons = "; ".join(f"{c.task}: {c.note}" for c in report.cases)
        report.failures.append(Failure("supports", "every kit task", f"supports() rejected them all ({reasons}).",
                                       "pass tasks=[...] with a task the method applies to (registered_task(...) or your own KitTask)."))
    return report


@contextmanager
def _global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's, numpy's and Python's global generators with ``seed``, restoring them after.

    The kit runs each distillation under two different global states: a method that draws from a
    global generator instead of ``context.generator`` then gives two different artifacts."""
    cuda = [device.index or 0] if device.type == "cuda" else []
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


@contextmanager
def _deterministic_kernels(device: torch.device) -> Iterator[None]:
    """On CUDA, PyTorch's deterministic kernels (cuDNN and index/scatter backward otherwise use
    atomics), so that the ``seeded`` rule tests the method's seeding rather than run-to-run kernel
    noise. Ops with no deterministic CUDA kernel (``grid_sample``'s backward, used by DSA) only warn."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def _origin(exc: BaseException) -> str:
    """``file:line`` of the innermost frame that raised ``exc`` outside torch's own code."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename.replace("\\", "/")]
    return f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""


class _Runner:
    """Runs one distiller over kit tasks and appends cases and failures to a report."""

    def __init__(self, method: Distiller, report: ConformanceReport, device: torch.device, profile: str, seed: int,
                 cache_dir: Path):
        self.method, self.report, self.device = method, report, device
        self.profile, self.seed, self.cache_dir = profile, seed, cache_dir

    def fail(self, rule: str, where: str, detail: str, fix: str) -> None:
        self.report.failures.append(Failure(rule, where, detail, fix))

    def context(self) -> RunContext:
        generator = torch.Generator(self.device).manual_seed(self.seed)
        return RunContext(self.device, self.seed, generator, Progress(), self.profile, None, self.cache_dir)

    def distill(self, view: TaskView, budget: Budget | None, learner: Learner, global_seed: int) -> tuple[Artifact, RunContext, bool]:
        """One run on a private copy of the view; also whether the run left that copy unchanged."""
        context, copy = self.context(), _copy(view)
        with _global_rng(global_seed, self.device), _deterministic_kernels(self.device):
            artifact = self.method.distill(copy, budget, learner, context)  # type: ignore[arg-type]
        return artifact, context, _view_hash(copy) == _view_hash(view)

    def learner(self, kit_task: KitTask) -> Learner:
        from ddbench.plugins import get_plugin_manager, instantiate
        from ddbench.suite import parse_named

        if isinstance(kit_task.learner, Learner):
            return kit_task.learner
        name, options = parse_named(kit_task.learner or kit_task.task.default_learner)
        return instantiate(get_plugin_manager().get("learner", name), options, self.profile)

    def task(self, kit_task: KitTask) -> None:
        view = task_view(kit_task.task, self.device)
        reason = self.method.supports(view)
        if reason is not None and not isinstance(reason, str):
            self.fail("supports", view.name, f"supports() returned {reason!r}.",
                      "return None when the method applies to the task, else a one-line reason string.")
            return
        if reason is not None:
            self.report.cases.append(Case(view.name, "-", "skipped", note=reason))
            return
        learner = self.learner(kit_task)
        budgets: tuple[Budget | None, ...] = (None,) if self.method.budget_exempt else kit_task.budgets
        trained = False
        for budget in budgets:
            artifact = self.budget(view, budget, learner)
            if artifact is not None and not trained:
                self.trainable(kit_task, view, learner, artifact, f"{view.name} {budget or 'full'}")
                trained = True
        if kit_task.impossible is not None and not self.method.budget_exempt:
            self.impossible(view, kit_task.impossible, learner)

    def budget(self, view: TaskView, budget: Budget | None, learner: Learner) -> Artifact | None:
        """Distil twice at a meetable budget; check the artifact and the seed. The artifact if usable."""
        where = f"{view.name} {budget or 'full'}"
        case = Case(view.name, str(budget or "full"), "failed")
        self.report.cases.append(case)
        before = len(self.report.failures)
        start = time.perf_counter()
        try:
            artifact, context, unchanged = self.distill(view, budget, learner, global_seed=1)
        except Exception as exc:  # noqa: BLE001 - every crash becomes a named failure
            self.fail("runs", where, f"distill() raised {_first_line(exc)}{_origin(exc)}.",
                      "a budget the method can meet must produce an artifact; raise BudgetError only for budgets it cannot meet.")
            case.note = "raised"
            return None
        case.seconds = time.perf_counter() - start
        case.progress_updates = len(context.progress.history)
        if case.progress_updates == 0:
            self.fail("progress", where, "distill() never called context.progress.update().",
                      "call context.progress.update(step, total, loss=...) in the main loop (at least once).")
        if not unchanged:
            self.fail("read-only-task", where, "distill() changed the task's train or validation tensors in place.",
                      "clone before modifying, e.g. task.train.x[idx].clone().")
        usable = self.artifact(view, budget, learner, artifact, case, where)
        self.seeded(view, budget, learner, artifact, where)
        if len(self.report.failures) == before:
            case.status = "ok"
        return artifact if usable else None

    def artifact(self, view: TaskView, budget: Budget | None, learner: Learner, artifact: Any, case: Case, where: str) -> bool:
        """Check one artifact against returns-artifact, on-device, finite, valid and within-budget."""
        if not isinstance(artifact, Artifact) or not all(isinstance(t, torch.Tensor) for t in getattr(artifact, "tensors", {}).values()):
            self.fail("returns-artifact", where, f"distill() returned {type(artifact).__name__}, not an Artifact of tensors.",
                      "return ddbench.Artifact(tensors={'x': ..., 'y': ...}) with torch.Tensor values.")
            return False
        off = {k: str(t.device) for k, t in artifact.tensors.items() if t.device.type != self.device.type}
        if off:
            self.fail("on-device", where, f"tensors {off} are not on the requested device {self.device}.",
                      "create every tensor on context.device (device=context.device, or .to(context.device)).")
            return False
        usable = True
        bad = [k for k, t in artifact.tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            usable = False
            self.fail("finite", where, f"tensors {bad} hold NaN or infinite values.",
                      "lower the learning rate, clip gradients or guard divisions; never return a diverged artifact.")
        else:  # validate() checks finiteness too: run it only when the values are finite
            try:
                admit(artifact, view, None, self.report.distiller, type(learner))
            except DDBenchError as exc:
                usable = False
                self.fail("valid", where, str(exc), "store plain tensors: float32 'x' as (N, *task.input_shape) and one int64 label "
                          "or float target 'y' per row; declare only recipe choices (real numbers travel as counted tensors).")
        storage = count_storage(artifact)
        case.stored_scalars = storage.scalars
        if budget is not None:
            case.limit = budget.scalars(view)
            if storage.scalars > case.limit:
                usable = False
                parts = ", ".join(f"{k}={v}" for k, v in storage.by_tensor.items())
                self.fail("within-budget", where, f"the artifact stores {storage.scalars} scalars ({parts}), over {budget} = {case.limit}.",
                          "size the artifact from the budget (budget.ipc(task), budget.examples(task), budget.scalars(task)); "
                          "every tensor counts, labels and learned scalars included.")
        return usable

    def seeded(self, view: TaskView, budget: Budget | None, learner: Learner, first: Any, where: str) -> None:
        """Distil again with the same seed under another global RNG state; compare."""
        try:
            second, _, _ = self.distill(view, budget, learner, global_seed=2)
        except Exception as exc:  # noqa: BLE001
            self.fail("seeded", where, f"a second run with the same seed raised {_first_line(exc)}{_origin(exc)}.",
                      "keep no state between distill() calls; draw randomness from context.generator.")
            return
        artifacts = (first, second)
        if not all(isinstance(a, Artifact) and all(t.device.type == self.device.type for t in a.tensors.values()) for a in artifacts):
            return  # returns-artifact / on-device already name the problem
        difference = _difference(first, second, exact=self.device.type == "cpu")
        if difference:
            nondeterministic = "" if self.device.type == "cpu" else (
                " If PyTorch warned that an op has no deterministic CUDA kernel (grid_sample's backward, used by DSA), "
                "that op is the cause: check seeding with --ddbench-device cpu.")
            self.fail("seeded", where, f"two runs with seed {self.seed} gave different artifacts ({difference}).",
                      "draw all randomness from context.generator or context.fork(k), never from the global "
                      "torch/numpy/random generators, and keep no state between calls." + nondeterministic)

    def trainable(self, kit_task: KitTask, view: TaskView, learner: Learner, artifact: Artifact, where: str) -> None:
        """Train the task's learner briefly on the artifact with the recipe it declares."""
        try:
            recipe = kit_task.task.recipe(self.profile).updated(artifact.recipe)
            recipe = dataclasses.replace(recipe, epochs=min(recipe.epochs, TRAIN_EPOCHS))
            model = learner.build(view, 0).to(self.device)
            learner.fit(model, with_labels(artifact, view.num_classes), recipe, torch.Generator(self.device).manual_seed(0))
            pred = learner.predict(model, view.val.x)
        except Exception as exc:  # noqa: BLE001
            self.fail("trainable", where, f"learner {learner.name!r} could not train on the artifact: {_first_line(exc)}{_origin(exc)}.",
                      "store what the learner trains from (float 'x', int64 class labels or float targets 'y') "
                      "and only recipe overrides the learner understands.")
            return
        if not bool(torch.isfinite(pred).all()):
            self.fail("trainable", where, f"learner {learner.name!r} trained on the artifact predicts NaN or infinity.",
                      "check the artifact's scale and any learned learning rate it declares.")

    def impossible(self, view: TaskView, budget: Budget, learner: Learner) -> None:
        """A budget below what the method needs must raise BudgetError, not crash or overspend."""
        where = f"{view.name} {budget} (unmeetable)"
        case = Case(view.name, f"{budget} (unmeetable)", "failed", limit=budget.scalars(view))
        self.report.cases.append(case)
        fix = "check the budget before any work and raise ddbench.errors.BudgetError naming it (budget.ipc(task) does so)."
        start = time.perf_counter()
        try:
            artifact, _, _ = self.distill(view, budget, learner, global_seed=1)
        except BudgetError as exc:
            case.status, case.note, case.seconds = "ok", f"BudgetError: {exc}", time.perf_counter() - start
            return
        except Exception as exc:  # noqa: BLE001
            self.fail("budget-error", where, f"distill() crashed with {_first_line(exc)}{_origin(exc)} instead of a BudgetError.", fix)
            return
        case.seconds = time.perf_counter() - start
        if not isinstance(artifact, Artifact):
            self.fail("budget-error", where, f"distill() returned {type(artifact).__name__} instead of raising BudgetError.", fix)
            return
        stored = count_storage(artifact).scalars
        case.stored_scalars = stored
        if stored > budget.scalars(view):
            self.fail("budget-error", where, f"distill() returned an artifact of {stored} scalars, over {budget} = {case.limit}, "
                                             "instead of raising BudgetError.", fix)
        elif stored == 0 or len(artifact.tensors.get("x", torch.ones(1))) == 0:
            self.fail("budget-error", where, "distill() returned an empty artifact instead of raising BudgetError.", fix)
        else:
            case.status, case.note = "ok", "met it"


def _copy(view: TaskView) -> TaskView:
    """The view with its own train and validation tensors, so one run cannot change the next's data."""
    return dataclasses.replace(view, train=Split(view.train.x.clone(), view.train.y.clone()),
                               val=Split(view.val.x.clone(), view.val.y.clone()), info=dict(view.info))


def _view_hash(view: TaskView) -> str:
    return content_hash(Artifact({"tx": view.train.x, "ty": view.train.y, "vx": view.val.x, "vy": view.val.y}))


def _difference(a: Artifact, b: Artifact, exact: bool) -> str:
    """'' when the artifacts match (bitwise when ``exact``), else what differs first."""
    if sorted(a.tensors) != sorted(b.tensors):
        return f"tensor names {sorted(a.tensors)} vs {sorted(b.tensors)}"
    for k in sorted(a.tensors):
        x, y = a.tensors[k], b.tensors[k]
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"tensor {k!r}: {tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}"
        same = content_hash(Artifact({k: x})) == content_hash(Artifact({k: y})) if exact else \
            torch.allclose(x.double(), y.double(), rtol=SEEDED_RTOL, atol=SEEDED_RTOL, equal_nan=True)
        if not same:
            return f"tensor {k!r} differs"
    if a.recipe != b.recipe:
        return f"recipe {a.recipe} vs {b.recipe}"
    return ""


def check_registered(distiller: type[Distiller]) -> str:
    """Assert that an installed plugin registers ``distiller`` through the ``ddbench`` entry-point
    group (what ``ddbench`` itself loads); return that plugin's name."""
    from ddbench.plugins import PluginManager

    manager = PluginManager()
    try:
        manager.load_entrypoints(disabled=[])
    except PluginError as exc:
        raise ConformanceError(_single("entry-point", "plugin loading", str(exc), "fix or uninstall the plugin named.", distiller)) from exc
    name = getattr(distiller, "name", "?")
    if name not in manager.names("distiller"):
        raise ConformanceError(_single(
            "entry-point", f"distiller {name!r}", "no installed plugin registers it.",
            "install the package (pip install -e .) and list its module under [project.entry-points.ddbench] in "
            "pyproject.toml; the module must define a @hookimpl ddbench_register_distillers.", distiller))
    if manager.get("distiller", name) is not distiller:
        owner = manager.owner("distiller", name)
        raise ConformanceError(_single("entry-point", f"distiller {name!r}", f"plugin {owner!r} registers another class under this name.",
                                       "rename one of them.", distiller))
    return manager.owner("distiller", name)


def _single(rule: str, where: str, detail: str, fix: str, distiller: type) -> ConformanceReport:
    return ConformanceReport(str(getattr(distiller, "name", distiller)), "-", failures=[Failure(rule, where, detail, fix)])


# --------------------------------------------------------------------------------------------
# The pytest plugin (entry point ``pytest11: ddbench = ddbench.testing``)
# --------------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ddbench", "ddbench conformance kit")
    group.addoption("--ddbench-device", default="cpu", metavar="DEVICE",
                    help="device the ddbench conformance kit runs distillers on: cpu (default), cuda[:N] or auto")


@pytest.fixture
def ddbench_device(request: pytest.FixtureRequest) -> torch.device:
    """The device of ``--ddbench-device`` (cpu unless given)."""
    from ddbench.harness import resolve_device

    return resolve_device(request.config.getoption("ddbench_device"))


@pytest.fixture
def ddbench_check(ddbench_device: torch.device, tmp_path: Path) -> Callable[..., ConformanceReport]:
    """:func:`check_distiller` on ``--ddbench-device`` with a temporary cache folder."""
    return functools.partial(check_distiller, device=ddbench_device, cache_dir=tmp_path / "ddbench-cache")


@pytest.fixture
def ddbench_context(ddbench_device: torch.device, tmp_path: Path) -> RunContext:
    """A fresh quick-profile :class:`RunContext` (seed 0) for an author's own unit tests."""
    return RunContext(ddbench_device, 0, torch.Generator(ddbench_device).manual_seed(0), Progress(), "quick",
                      None, tmp_path / "ddbench-cache")


@pytest.fixture
def ddbench_tiny_classification(ddbench_device: torch.device) -> TaskView:
    """The kit's 3-class 8x8 task as a distiller sees it, on ``--ddbench-device``."""
    return task_view(TinyClassification(), ddbench_device)


@pytest.fixture
def ddbench_tiny_regression(ddbench_device: torch.device) -> TaskView:
    """The kit's 8-d regression task as a distiller sees it, on ``--ddbench-device``."""
    return task_view(TinyRegression(), ddbench_device)
