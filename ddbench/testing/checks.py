"""The conformance kit's checks: :func:`check_distiller` and :func:`conformance` run a distiller on
kit tasks and check every rule of :data:`~ddbench.testing.report.RULES`; :func:`check_registered`
checks that an installed plugin registers it."""
from __future__ import annotations

import dataclasses
import os
import pickle
import random
import shutil
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddbench.budget import labels
from ddbench.budget.artifact import admission_problems, content_hash, count_storage, with_labels
from ddbench.contracts.checkpoint import CheckpointStore
from ddbench.contracts.interfaces import Artifact, Distiller, Learner, Progress, RunContext, Split, TaskView
from ddbench.errors import BudgetError, DDBenchError, NotApplicable, PluginError
from ddbench.ops.device import resolve_device
from ddbench.plugins import PluginManager, Registry, get_plugin_manager, instantiate, parse_named
from ddbench.run.suite import view_opener
from ddbench.testing.report import Case, ConformanceError, ConformanceReport, Failure
from ddbench.testing.tasks import KitTask, task_view, tiny_classification, tiny_regression
from ddbench.vocab import DISTILLATION_REGIMES, FULL, Budget

TRAIN_EPOCHS = 2  # the ``trainable`` rule checks compatibility, not accuracy
SEEDED_RTOL = 1e-4  # off the CPU, kernels may be non-deterministic: compare with a tolerance

FIXES: dict[str, str] = {
    "returns-artifact": "return ddbench.Artifact(tensors={'x': ..., 'y': ...}) with torch.Tensor values.",
    "valid": "store plain tensors: float32 'x' as (N, *task.input_shape) and one int64 label or float target 'y' per row; "
             "declare only recipe choices (real numbers travel as counted tensors).",
    "finite": "lower the learning rate, clip gradients or guard divisions; never return a diverged artifact.",
    "within-budget": "size the artifact from the budget (budget.ipc(task), budget.examples(task), budget.scalars(task)); "
                     "every tensor counts, labels and learned scalars included.",
    "resumes": "name every object the loop changes in context.checkpointer(...) (tensors, optimisers, generators), call "
               "restore() before the loop and step(done, ...) after each iteration with the other values the loop "
               "needs (docs/write-a-distiller.md, Checkpoints); or leave `resumable` False.",
}
"""How to fix each rule that :func:`ddbench.budget.artifact.admission_problems` reports a problem under."""


def check_distiller(distiller: type[Distiller], options: dict[str, Any] | None = None, *,
                    tasks: Sequence[KitTask] | None = None, device: torch.device | str = "cpu",
                    profile: str = "quick", seed: int = 0, cache_dir: Path | str | None = None) -> ConformanceReport:
    """Run ``distiller`` (a class, built with ``options`` over its ``quick`` values in the ``quick``
    profile) on the kit's tasks and check every rule of :data:`~ddbench.testing.report.RULES`.

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
        report.failures.append(Failure("importable", f"class {distiller.__qualname__}",
                                       f"the class cannot be sent to a cell worker ({exc}).",
                                       "define the distiller class at module level of an importable module (not inside a function)."))
    run = _Runner(method, report, device, profile, seed, Path(cache_dir) if cache_dir else Path(".ddbench/cache"))
    for kit_task in (tasks if tasks is not None else [tiny_classification(), tiny_regression()]):
        run.check_task(kit_task)
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


class _Stopped(BaseException):
    """The kit's stand-in for a kill right after a checkpoint (a BaseException: a distiller's
    ``except Exception`` does not catch it)."""


class _KitStore(CheckpointStore):
    """A checkpoint store that counts the checkpoints a run offers and writes only the ``write_at``-th
    ones (1-based); with ``stop``, the run stops (:class:`_Stopped`) right after the first it writes."""

    def __init__(self, path: Path, write_at: tuple[int, ...] = (), stop: bool = False):
        self.warned: list[str] = []
        super().__init__(path, "conformance-kit", every_s=0.0, warn=self.warned.append)
        self.offers, self.write_at, self.stop = 0, write_at, stop

    def write(self, step: int, objects: dict[str, Any], values: dict[str, Any]) -> None:
        self.offers += 1
        if self.offers in self.write_at:
            super().write(step, objects, values)
            if self.stop:
                raise _Stopped


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
        self.offered: dict[str, int] = {}  # where -> the checkpoints its first run offered (a resumable distiller)

    def fail(self, rule: str, where: str, detail: str, fix: str) -> None:
        self.report.failures.append(Failure(rule, where, detail, fix))

    def make_context(self, cache_dir: Path | None = None, checkpoints: CheckpointStore | None = None) -> RunContext:
        generator = torch.Generator(self.device).manual_seed(self.seed)
        return RunContext(self.device, self.seed, generator, Progress(), self.profile, None, cache_dir or self.cache_dir,
                          open_view=view_opener(get_plugin_manager(), self.profile, self.device), checkpoints=checkpoints)

    def distill(self, view: TaskView, budget: Budget | None, learner: Learner, global_seed: int,
                cache_dir: Path | None = None, checkpoints: CheckpointStore | None = None) -> tuple[Artifact, RunContext, bool]:
        """One run on a private copy of the view; also whether the run left that copy unchanged."""
        context, copy = self.make_context(cache_dir, checkpoints), _copy(view)
        with _global_rng(global_seed, self.device), _deterministic_kernels(self.device):
            artifact = self.method.distill(copy, budget, learner, context)  # type: ignore[arg-type]  # None only for budget_exempt ones
        return artifact, context, _view_hash(copy) == _view_hash(view)

    def build_learner(self, kit_task: KitTask) -> Learner:
        if isinstance(kit_task.learner, Learner):
            return kit_task.learner
        name, options = parse_named(kit_task.learner or kit_task.task.default_learner)
        return instantiate(get_plugin_manager().learners.get(name), options, self.profile)

    def check_task(self, kit_task: KitTask) -> None:
        view = task_view(kit_task.task, self.device)
        learner = self.build_learner(kit_task)
        reason = self.method.supports(view, learner)
        if reason is not None and not isinstance(reason, str):
            self.fail("supports", view.name, f"supports() returned {reason!r}.",
                      "return None when the method applies to the task and learner, else a one-line reason string.")
            return
        if reason is not None:
            self.report.cases.append(Case(view.name, "-", "skipped", note=reason))
            return
        budgets: tuple[Budget | None, ...] = (None,) if self.method.budget_exempt else kit_task.budgets
        trained = False
        first = len(self.report.cases)
        for budget in budgets:
            artifact = self.check_meetable_budget(view, budget, learner)
            if artifact is not None and not trained:
                self.check_trainable(kit_task, view, learner, artifact, f"{view.name} {budget or 'full'}")
                trained = True
                if self.method.resumable:
                    self.check_resumes(view, budget, learner, artifact, f"{view.name} {budget or 'full'}")
        if all(c.status == "skipped" for c in self.report.cases[first:]):
            self.fail("runs", view.name, "distill() raised NotApplicable at every budget the kit gave it, so nothing was checked.",
                      "give the kit a budget the method applies to, e.g. tasks=[tiny_classification(budgets=['ipc=2'])].")
        if kit_task.impossible is not None and not self.method.budget_exempt:
            self.check_unmeetable_budget(view, kit_task.impossible, learner)

    def check_meetable_budget(self, view: TaskView, budget: Budget | None, learner: Learner) -> Artifact | None:
        """Distil twice at a meetable budget; check the artifact and the seed. The artifact if usable."""
        where = f"{view.name} {budget or 'full'}"
        case = Case(view.name, str(budget or FULL), "failed")
        self.report.cases.append(case)
        before = len(self.report.failures)
        start = time.perf_counter()
        counting = _KitStore(Path(tempfile.gettempdir()) / f"ddbench-kit-{uuid.uuid4().hex}.safetensors")  # writes nothing
        try:
            artifact, context, unchanged = self.distill(view, budget, learner, global_seed=1,
                                                        checkpoints=counting if self.method.resumable else None)
        except NotApplicable as exc:  # a skip, as the harness records it (the method does not apply at this budget)
            case.status, case.note = "skipped", str(exc)
            return None
        except Exception as exc:  # noqa: BLE001 - every crash becomes a named failure
            self.fail("runs", where, f"distill() raised {_first_line(exc)}{_origin(exc)}.",
                      "a budget the method can meet must produce an artifact; raise BudgetError only for budgets it cannot meet.")
            case.note = "raised"
            return None
        case.seconds = time.perf_counter() - start
        self.offered[where] = counting.offers
        case.progress_updates = len(context.progress.history)
        if case.progress_updates == 0:
            self.fail("progress", where, "distill() never called context.progress.update().",
                      "call context.progress.update(step, total, loss=...) in the main loop (at least once).")
        if not unchanged:
            self.fail("read-only-task", where, "distill() changed the task's train or validation tensors in place.",
                      "clone before modifying, e.g. task.train.x[idx].clone().")
        usable = self.check_artifact(view, budget, learner, artifact, case, where)
        self.check_seeded(view, budget, learner, artifact, where)
        if len(self.report.failures) == before:
            case.status = "ok"
        return artifact if usable else None

    def check_artifact(self, view: TaskView, budget: Budget | None, learner: Learner, artifact: Any, case: Case, where: str) -> bool:
        """Check one artifact against returns-artifact and on-device, then against finite, valid and
        within-budget as the harness admits it (:func:`ddbench.budget.artifact.admission_problems`)."""
        if not isinstance(artifact, Artifact) or not all(isinstance(t, torch.Tensor) for t in getattr(artifact, "tensors", {}).values()):
            self.fail("returns-artifact", where, f"distill() returned {type(artifact).__name__}, not an Artifact of tensors.",
                      FIXES["returns-artifact"])
            return False
        off = {k: str(t.device) for k, t in artifact.tensors.items() if t.device.type != self.device.type}
        if off:
            self.fail("on-device", where, f"tensors {off} are not on the requested device {self.device}.",
                      "create every tensor on context.device (device=context.device, or .to(context.device)).")
            return False
        case.stored_scalars = count_storage(artifact).scalars
        if budget is not None:
            case.limit = budget.scalars(view)
        problems = admission_problems(artifact, view, budget, self.report.distiller, type(learner))
        for problem in problems:
            self.fail(problem.rule, where, problem.message, FIXES[problem.rule])
        return not problems

    def check_seeded(self, view: TaskView, budget: Budget | None, learner: Learner, first: Any, where: str) -> None:
        """Distil again with the same seed under another global RNG state and an empty cache (what
        the first run cached must not hide state it drew from elsewhere); compare."""
        try:
            second, _, _ = self.distill(view, budget, learner, global_seed=2, cache_dir=self.cache_dir / f"seeded-{budget}")
        except Exception as exc:  # noqa: BLE001 - any crash of the plugin is a finding
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

    def check_resumes(self, view: TaskView, budget: Budget | None, learner: Learner, first: Artifact, where: str) -> None:
        """A resumable distiller offers checkpoints (counted in its first run, which wrote none); a run
        stopped right after the middle one, then run again, restores it and (writing one more
        checkpoint on the way, which must change nothing) ends with the first run's artifact."""
        offers = self.offered.get(where, 0)
        if offers == 0:
            self.fail("resumes", where, "the distiller declares `resumable` but offered no checkpoint "
                      "(context.checkpointer(...).step() was never called).", FIXES["resumes"])
            return
        middle = max(1, offers // 2)
        folder = Path(tempfile.mkdtemp(prefix="ddbench-kit-checkpoints-"))
        path = folder / "checkpoint.safetensors"
        try:
            try:
                self.distill(view, budget, learner, global_seed=1, checkpoints=_KitStore(path, (middle,), stop=True))
            except _Stopped:
                pass
            resuming = _KitStore(path, (1,))
            resumed, context, _ = self.distill(view, budget, learner, global_seed=1, checkpoints=resuming)
        except Exception as exc:  # noqa: BLE001 - any crash of the plugin is a finding
            self.fail("resumes", where, f"a run with checkpoints raised {_first_line(exc)}{_origin(exc)}.", FIXES["resumes"])
            return
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        stopped = f"stopped after checkpoint {middle} of the {offers} it offers"
        if resuming.warned or context.resumed_from == 0:
            why = resuming.warned[0] if resuming.warned else "restore() found nothing or was never called"
            self.fail("resumes", where, f"a run {stopped} did not resume from it ({why}).", FIXES["resumes"])
            return
        difference = _difference(first, resumed, exact=self.device.type == "cpu")
        if difference:
            self.fail("resumes", where, f"a run {stopped} (step {context.resumed_from}) and resumed gave another artifact "
                                        f"({difference}).", FIXES["resumes"])

    def check_trainable(self, kit_task: KitTask, view: TaskView, learner: Learner, artifact: Artifact, where: str) -> None:
        """Train the task's learner briefly on the artifact with the recipe it declares."""
        try:
            kind = labels.regime(artifact.tensors, artifact.recipe)
            task = kit_task.task
            recipe = (task.teacher_recipe(self.profile) if kind in DISTILLATION_REGIMES else task.recipe(self.profile))
            recipe = recipe.updated(artifact.recipe)
            recipe = dataclasses.replace(recipe, epochs=min(recipe.epochs, TRAIN_EPOCHS))
            model = learner.build(view, 0).to(self.device)
            artifact = labels.with_teacher(with_labels(artifact, view.num_classes), view, None, self.device)
            learner.fit(model, artifact, recipe, torch.Generator(self.device).manual_seed(0))
            pred = learner.predict(model, view.val.x)
        except Exception as exc:  # noqa: BLE001 - any crash of the plugin is a finding
            self.fail("trainable", where, f"learner {learner.name!r} could not train on the artifact: {_first_line(exc)}{_origin(exc)}.",
                      "store what the learner trains from (float 'x', int64 class labels or float targets 'y') "
                      "and only recipe overrides the learner understands.")
            return
        if not bool(torch.isfinite(pred).all()):
            self.fail("trainable", where, f"learner {learner.name!r} trained on the artifact predicts NaN or infinity.",
                      "check the artifact's scale and any learned learning rate it declares.")

    def check_unmeetable_budget(self, view: TaskView, budget: Budget, learner: Learner) -> None:
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
        except Exception as exc:  # noqa: BLE001 - any crash of the plugin is a finding
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
    if manager.distillers.get(name) is not distiller:
        owner = manager.owner("distiller", name)
        raise ConformanceError(_single("entry-point", f"distiller {name!r}", f"plugin {owner!r} registers another class under this name.",
                                       "rename one of them.", distiller))
    return manager.owner("distiller", name)


def _single(rule: str, where: str, detail: str, fix: str, distiller: type) -> ConformanceReport:
    return ConformanceReport(str(getattr(distiller, "name", distiller)), "-", failures=[Failure(rule, where, detail, fix)])
