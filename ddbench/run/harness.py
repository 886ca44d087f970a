"""The harness loop: for every (task, distiller, budget, seed) cell, distil in a fresh worker
process, admit the artifact at the boundary, train the task's learner on it K times with explicit
seeds, and score on the test split.

The distiller runs in a cell worker (:mod:`ddbench.run.worker`) that holds the task's train and
validation splits only; what crosses back is the artifact's tensors (safetensors bytes) and its
declared recipe and meta (JSON). The harness counts and validates those tensors, checks the
declared recipe (:func:`ddbench.budget.artifact.admit`), and trains its own learner instance,
which the distiller never saw, on them; ``meta`` is recorded but never reaches the learner.
A failing cell (a plugin that raises, exits, crashes or overruns its time limit and its grace; an
over-budget or NaN artifact) is recorded with its error and a capped traceback; the run goes on. A
cell that ran past its time limit but finished inside the grace is kept, with the seconds past the
limit recorded (:data:`~ddbench.results.records.OVERRAN`).

A cell trains under its protocol (docs/design.md §4): ``native`` (the task's recipe updated by the
artifact's declared one) or ``common`` (the task's common recipe, the artifact's declarations of
the protocol fields set aside). The two cells of one distillation are adjacent in a run, and the
second one reuses the first one's distillation instead of distilling again.

Every cell computes with the run's torch thread count (``threads``, default 1), set in the harness
and in its workers and recorded with the result, so that a cell gives the same numbers under every
executor. A distillation that checkpoints
(:meth:`~ddbench.contracts.interfaces.RunContext.checkpointer`) keeps its checkpoint under
``<cache>/checkpoints/``, named by :func:`checkpoint_key`, until its cell is final: a cell whose
worker was killed resumes from it when it runs again.
"""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
import statistics
import tempfile
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ddbench.budget import labels
from ddbench.budget.artifact import Storage, admit, compression, content_hash, save, with_labels
from ddbench.contracts import deviations
from ddbench.contracts.checkpoint import CheckpointStore
from ddbench.contracts.executor import Executor, one_by_one
from ddbench.contracts.interfaces import Artifact, Distiller, Learner, Split, Task, TaskView
from ddbench.contracts.recipe import Recipe, evaluation_recipe
from ddbench.errors import BudgetError, one_line
from ddbench.ops.device import resolve_device
from ddbench.ops.subsets import random_artifact
from ddbench.plugins import PluginManager, instantiate, parse_named
from ddbench.results.provenance import provenance
from ddbench.results.records import OVERRAN, RUN_LENGTH_META, Cell, CellResult
from ddbench.run import worker
from ddbench.run.memo import Evaluation, EvaluationMemo
from ddbench.run.suite import Suite, expand_suite, load_task
from ddbench.vocab import DISTILLATION_REGIMES, PROTOCOL_FIELDS, Budget

TRACEBACK_CHARS = 8000  # a stored traceback keeps its first and last lines up to this size
HEADER_BYTES = 1 << 20  # room for the safetensors header beyond 8 bytes per budgeted scalar
MAPPED_CHUNK = 2048  # examples of a memory-mapped split read and predicted at a time


@dataclass(frozen=True)
class Distilled:
    """A cell's distillation, which the cell of the same distillation under the other protocol reuses
    (:meth:`Cell.distillation`): the worker's reply and, once admitted, the artifact the learners
    train from (its teacher rebuilt from its own tensors; no meta) and the storage the harness counted."""

    reply: worker.DistillReply
    artifact: Artifact | None = None
    storage: Storage | None = None


def checkpoint_key(cell: Cell) -> str:
    """What names a distillation's checkpoint: its :meth:`Cell.distillation` without the time limit,
    which may cut a run short but does not change its state at any iteration."""
    config = json.loads(cell.distillation())
    config.pop("time_limit_s", None)
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def capped(text: str, limit: int = TRACEBACK_CHARS) -> str:
    """``text`` cut to about ``limit`` characters, keeping its start and its end (a traceback's cause)."""
    if len(text) <= limit:
        return text
    head = limit // 4
    return f"{text[:head]}\n[... {len(text) - limit} characters cut ...]\n{text[-(limit - head):]}"


class Harness:
    """Runs suites of cells with the plugins of ``manager`` on ``device``.

    Distillations run in worker processes (:mod:`ddbench.run.worker`), which import the main module
    of the program, as multiprocessing does: a script that drives a harness itself guards its
    entry point with ``if __name__ == "__main__":``.

    Every cell computes with ``threads`` torch threads (default 1), its distillation and its
    evaluation alike, whatever runs it: fp32 sums follow the thread count, so a suite gives the same
    numbers one cell at a time, several at once and under Ray (docs/executors.md). The harnesses
    of one run's cell hosts share their evaluations through the folder ``shared_evaluations``.
    ``checkpoint_every_s``: seconds between a distillation's checkpoints (None: none).
    """

    def __init__(self, manager: PluginManager, device: str = "auto", cache_dir: Path | str = ".ddbench/cache",
                 on_progress: Callable[[str, int, int | None, dict[str, float]], None] | None = None,
                 artifact_dir: Path | str | None = None, on_status: Callable[[str], None] | None = None, threads: int = 1,
                 shared_evaluations: Path | None = None, checkpoint_every_s: float | None = worker.CHECKPOINT_EVERY_S):
        if threads < 1:
            raise ValueError(f"threads must be >= 1 (got {threads!r})")
        self.manager = manager
        self.threads = threads
        self.checkpoint_every_s = checkpoint_every_s
        self.device = resolve_device(device)
        self.cache_dir = Path(cache_dir)
        self.artifact_dir = Path(artifact_dir) if artifact_dir is not None else None
        self.on_progress = on_progress
        self.on_status = on_status  # an executor's one-line state of the run (cells done, running, failed)
        self._tasks: dict[str, tuple[Task, TaskView, Split]] = {}
        self._views: dict[str, worker.ViewSpec] = {}
        self._view_dir: Path | None = None
        self._random_refs: dict[str, float] = {}
        self.evaluations = EvaluationMemo(shared_evaluations)  # _scores, within one run

    # -- building ----------------------------------------------------------------------------
    def task(self, name: str, options: dict[str, Any], profile: str) -> tuple[Task, TaskView, Split]:
        """The task, the view distillers get (train/val on the device) and the test split."""
        key = json.dumps([name, options, profile], sort_keys=True, default=str)
        if key not in self._tasks:
            self._tasks[key] = load_task(self.manager, name, options, profile, self.device)
        return self._tasks[key]

    def _view_spec(self, name: str, options: dict[str, Any], profile: str) -> worker.ViewSpec:
        """The file a worker reads the view of task ``name`` from (its train and validation splits),
        written once per task: the cell's own, or another that its distiller reads (:meth:`RunContext.source_view`)."""
        key = json.dumps([name, options, profile], sort_keys=True, default=str)
        if key not in self._views:
            if self._view_dir is None:
                self._view_dir = Path(tempfile.mkdtemp(prefix="ddbench-views-"))
                weakref.finalize(self, shutil.rmtree, self._view_dir, True)
            path = self._view_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
            self._views[key] = worker.write_view(self.task(name, options, profile)[1], path)
        return self._views[key]

    def cells(self, suite: Suite) -> Iterator[Cell]:
        """Expand a suite into cells, validating every name up front (:func:`ddbench.run.suite.expand_suite`)."""
        return expand_suite(self.manager, suite, self.device.type)

    # -- running -----------------------------------------------------------------------------
    def start_workers(self) -> None:
        """Start the cell workers' fork server, which imports the plugins once (while tasks load)."""
        worker.mp_context(self.manager.modules())

    def run(self, suite: Suite, on_result: Callable[[CellResult], None] | None = None,
            skip: Callable[[Cell], bool] | None = None, executor: Executor | None = None) -> list[CellResult]:
        """Run every cell of ``suite`` but those ``skip`` accepts with ``executor`` (default: one cell
        after the other in this process, :func:`~ddbench.contracts.executor.one_by_one`); ``on_result``
        sees each result as soon as it is final. Returns the results in the suite's order."""
        cells = [cell for cell in self.cells(suite) if skip is None or not skip(cell)]
        results = []
        self.evaluations.clear()  # reuse within a run only: a second run trains its nets again
        for result in (executor.run(self, cells) if executor else one_by_one(self, cells)):
            results.append(result)
            if on_result is not None:
                on_result(result)
        order = {cell.key(): i for i, cell in enumerate(cells)}
        return sorted(results, key=lambda r: order[r.cell.key()])

    def run_cell(self, cell: Cell, tag: str = "", distilled: dict[str, Distilled] | None = None) -> CellResult:
        """Distil in a worker, admit the artifact, evaluate one cell; any failure becomes a failed result.

        ``distilled`` (what :meth:`run` passes): the last distillation by its :meth:`Cell.distillation`,
        reused by the cell of the same distillation under the other protocol, and replaced by this one's."""
        result = CellResult(cell, "failed", device=self._device_name(), threads=self.threads)
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            self._run_cell(result, tag, distilled)
        except Exception as exc:  # noqa: BLE001 - a failing cell never takes the run down
            result.status = "failed"
            result.error = one_line(exc)[:1000]
            result.traceback = capped(traceback.format_exc())
        finally:
            torch.set_num_threads(threads)
        if result.status != "failed" or result.resumed_from:
            # the distillation ended and its cell is final, or a distillation that resumed failed: it starts afresh next time
            store = self.checkpoints(cell)
            if result.status == "failed" and store.path.is_file():
                result.error = (f"{result.error[:800]} [it had resumed from a checkpoint at step {result.resumed_from}, now "
                                "deleted: the next run starts from the beginning]")
            store.delete()
        return result

    def checkpoints(self, cell: Cell) -> CheckpointStore:
        """Where a cell's distillation checkpoints: ``<cache>/checkpoints/<key>.safetensors`` (:func:`checkpoint_key`)."""
        key = checkpoint_key(cell)
        return CheckpointStore(self.cache_dir / "checkpoints" / f"{key}.safetensors", key, self.checkpoint_every_s or 0.0)

    def _run_cell(self, result: CellResult, tag: str, distilled: dict[str, Distilled] | None) -> None:
        """Fill ``result``: distil (or reuse the distillation), admit, evaluate; or say why the cell is skipped or failed."""
        cell = result.cell
        task, view, test = self.task(cell.task, cell.task_options, cell.profile)
        base = task.recipe(cell.profile) if cell.protocol == "native" else task.common_recipe(cell.profile)
        if base is None:
            result.status = "skipped"
            result.error = f"task {cell.task!r} has no common protocol (its common_recipe is None): only its native cells run"
            return
        distiller = self.manager.distillers.get(cell.distiller)
        result.deviations = deviations.applicable(distiller, cell.distiller_options, cell.profile)
        budget = None if distiller.budget_exempt else cell.budget
        done = self._distillation(cell, distiller, view, budget, tag, distilled)
        reply = done.reply
        result.distill_s, result.peak_mb, result.sources = reply.distill_s, reply.peak_mb, list(reply.sources)
        result.resumed_from = reply.resumed_from
        if reply.status != "ok":
            result.status = "skipped" if reply.status == "skipped" else "failed"
            result.error, result.traceback = reply.error[:1000], capped(reply.traceback)
            return
        learner: Learner = instantiate(self.manager.learners.get(cell.learner), cell.learner_options, cell.profile)
        artifact, storage = self._admitted(cell, done, view, budget, type(learner), distilled)
        result.regime = labels.regime(artifact.tensors, artifact.recipe)
        if cell.protocol == "common" and result.regime in DISTILLATION_REGIMES:  # a common board states one recipe
            result.status = "skipped"
            result.error = (f"the artifact is in the {result.regime} label regime, whose students train by distillation with the "
                            "task's teacher recipe, not the common one: its row is on the native board (docs/labels.md)")
            return
        result.stored_params, result.stored_bytes = storage.scalars, storage.bytes
        result.by_tensor, result.by_dtype = dict(storage.by_tensor), dict(storage.by_dtype)
        result.compression = compression(view, storage)
        self._evaluate(result, task, view, test, learner, artifact, reply.meta, storage, base)
        result.extra.pop(OVERRAN, None)  # the harness's own measure: no plugin sets it
        if cell.time_limit_s is not None and reply.distill_s > cell.time_limit_s:
            result.extra[OVERRAN] = reply.distill_s - cell.time_limit_s

    def _distillation(self, cell: Cell, distiller: type[Distiller], view: TaskView, budget: Budget | None, tag: str,
                      distilled: dict[str, Distilled] | None) -> Distilled:
        """The cell's distillation: the one in ``distilled`` when it is this cell's, else a new one (which replaces it)."""
        key = cell.distillation()
        if distilled is not None and key in distilled:
            return distilled[key]
        done = Distilled(self._distill(distiller, cell.distiller_options, cell, view, budget, cell.time_limit_s, tag))
        if distilled is not None:
            distilled.clear()
            distilled[key] = done
        return done

    def _admitted(self, cell: Cell, done: Distilled, view: TaskView, budget: Budget | None, learner: type[Learner],
                  distilled: dict[str, Distilled] | None) -> tuple[Artifact, Storage]:
        """The distillation's artifact as the learners train from it, its teacher rebuilt from its own
        tensors, and its storage: admitted once per distillation (a refused artifact is refused again,
        from the same reply)."""
        if done.artifact is not None and done.storage is not None:
            return done.artifact, done.storage
        admitted, storage = admit(Artifact(done.reply.tensors, done.reply.recipe), view, budget, cell.distiller, learner,
                                  self.manager.learners)
        artifact = labels.with_teacher(admitted, view, self.manager.learners, self.device)
        if distilled is not None:
            distilled[cell.distillation()] = replace(done, artifact=artifact, storage=storage)
        return artifact, storage

    def _evaluate(self, result: CellResult, task: Task, view: TaskView, test: Split, learner: Learner, artifact: Artifact,
                  meta: dict[str, Any], storage: Storage, base: Recipe) -> None:
        """Save the artifact with its ``meta`` if asked, train and score the evaluation nets on it (``meta``
        only reaches the task's diagnostics and the run length), then the label and random references."""
        cell = result.cell
        hard_base = base
        if result.regime in DISTILLATION_REGIMES:
            base = task.teacher_recipe(cell.profile)  # native only (run_cell skips the common cell)
        recipe = evaluation_recipe(base, artifact.recipe, cell.protocol)
        result.recipe = recipe.as_dict()
        if self.artifact_dir is not None:
            info = {"cell": cell.config(), "key": cell.key(), "provenance": provenance(self.manager),
                    "recipe": result.recipe, "storage": asdict(storage), "label_regime": result.regime}
            save(Artifact(artifact.tensors, artifact.recipe, meta), self.artifact_dir / f"{cell.task}-{cell.distiller}-{cell.key()}", info)
        scores, result.eval_mode, result.model_params, result.eval_s = self._scores(task, view, test, learner, artifact,
                                                                                    recipe, cell)
        result.metric = task.metric
        result.higher_is_better, result.leaderboard_columns = dict(task.higher_is_better), list(task.leaderboard_columns)
        result.values = [s[task.metric] for s in scores]
        for key in scores[0]:
            if key != task.metric:
                result.extra[key] = statistics.fmean(s[key] for s in scores)
        result.extra.update(task.artifact_metrics(Artifact(artifact.tensors, artifact.recipe, meta)))
        result.extra.update(run_length(meta))
        if result.regime != "hard":
            result.extra.update(self._label_references(task, view, test, learner, artifact, hard_base, cell))
        result.status = "ok"
        result.reference_regime = "teacher" if result.regime == "teacher" else "hard"
        result.random_ref = self._random_reference(task, view, test, learner, cell, hard_base, recipe, result, artifact)

    def _device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return "cpu"

    def _distill(self, distiller: type, options: dict[str, Any], cell: Cell, view: TaskView, budget: Budget | None,
                 time_limit_s: float | None, tag: str) -> worker.DistillReply:
        """One distillation in a fresh worker (:func:`ddbench.run.worker.distill`)."""
        def report(step: int, total: int | None, metrics: dict[str, float]) -> None:
            if self.on_progress is not None and tag:
                self.on_progress(f"{tag} {cell.label}", step, total, metrics)

        def open_view(spec: str) -> worker.ViewSpec:
            return self._view_spec(*parse_named(spec), cell.profile)

        checkpoint = None if self.checkpoint_every_s is None else self.checkpoints(cell)
        request = worker.DistillRequest(distiller, options, self.manager.learners.get(cell.learner), cell.learner_options,
                                        cell.profile, self._view_spec(cell.task, cell.task_options, cell.profile), budget,
                                        cell.seed, str(self.device), time_limit_s, str(self.cache_dir), self.threads, checkpoint)
        max_bytes = None if budget is None else budget.scalars(view) * 8 + HEADER_BYTES
        return worker.distill(request, report, max_bytes, open_view)

    def _scores(self, task: Task, view: TaskView, test: Split, learner: Learner, artifact: Artifact, recipe: Recipe,
                cell: Cell) -> Evaluation:
        """Train a fresh learner per evaluation seed on the artifact (:meth:`Learner.fit_ensemble`: one
        by one, or together where the learner can); score each on test. Also returns how they trained,
        the parameter count of one net (what storing a trained net would cost) and the seconds it took.

        An evaluation is a function of the artifact's content and declared recipe, the evaluation
        recipe, the learner, the seeds and the task: one identical to an earlier one of this run (a
        common cell whose method declares the common recipe, a random subset already trained as a
        reference) takes its results, its seconds included, and says so in its mode (:mod:`ddbench.run.memo`)."""
        declared = {k: v for k, v in artifact.recipe.items() if k not in PROTOCOL_FIELDS}  # those are in the recipe already
        key = json.dumps([cell.task, cell.task_options, cell.profile, cell.learner, cell.learner_options, cell.eval_seeds,
                          recipe.as_dict(), declared, content_hash(artifact)], sort_keys=True, default=str)
        def train() -> Evaluation:
            start = time.perf_counter()
            labelled = with_labels(artifact.to(self.device), view.num_classes)
            models = [learner.build(view, seed).to(self.device) for seed in cell.eval_seeds]
            generators = [torch.Generator(self.device).manual_seed(seed) for seed in cell.eval_seeds]
            mode = learner.fit_ensemble(models, labelled, recipe, generators)
            params = sum(p.numel() for p in models[0].parameters())  # after training: lazy modules are materialised
            scores = [task.score(outputs(functools.partial(learner.predict, model), test), test.y) for model in models]
            return scores, mode, params, time.perf_counter() - start

        (scores, mode, params, seconds), reused = self.evaluations.recall(key, train)
        return scores, f"{mode} (reused: an identical evaluation earlier in this run)" if reused else mode, params, seconds

    def _label_references(self, task: Task, view: TaskView, test: Split, learner: Learner, artifact: Artifact,
                          hard_base: Recipe, cell: Cell) -> dict[str, float]:
        """What an artifact outside the hard regime is worth without its labels' extra storage
        (docs/labels.md): ``teacher_free``, the mean metric of the same inputs with the hard labels
        its teacher, soft labels or bank imply (:func:`ddbench.budget.labels.hard_labels`), trained with the
        hard-label recipe; and in the teacher regime the teacher alone (``teacher_accuracy``, the
        "store the teacher" reference, at ``teacher_params``)."""
        kind = labels.regime(artifact.tensors, artifact.recipe)
        out: dict[str, float] = {}
        on_device = artifact.to(self.device)
        hard = Artifact({"x": on_device.x, "y": labels.hard_labels(on_device.tensors, kind, on_device.teacher)})
        recipe = evaluation_recipe(hard_base, hard_overrides(artifact.recipe), cell.protocol)
        scores = self._scores(task, view, test, learner, hard, recipe, cell)[0]
        out["teacher_free"] = statistics.fmean(s[task.metric] for s in scores)
        if kind == "teacher":
            teacher = on_device.teacher
            assert teacher is not None
            out["teacher_accuracy"] = task.score(outputs(lambda x: labels.logits(teacher, x), test), test.y)[task.metric]
            out["teacher_params"] = float(sum(t.numel() for t in labels.teacher_state(artifact.tensors).values()))
        return out

    def _random_reference(self, task: Task, view: TaskView, test: Split, learner: Learner, cell: Cell, base: Recipe,
                          recipe: Recipe, result: CellResult, artifact: Artifact) -> float | None:
        """The random real subset at this cell's budget and seed (:func:`ddbench.ops.subsets.random_artifact`)
        in the cell's reference regime, trained with this cell's recipe: ``base`` (its protocol's
        hard-label recipe) updated by what the artifact declared (augmentation, epochs under
        ``native``; a learned lr or implied labels do not carry over). In the teacher regime the
        subset is given the artifact's own teacher and trains with the cell's distillation recipe,
        so that the gain isolates what the inputs add (docs/labels.md); other regimes compare with
        the hard-label subset, which is all the harness can build without a teacher. Memoised per
        recipe (and teacher); a cell whose artifact is that very subset, trained with that very
        recipe, gives it for free. ``None`` when the budget holds no random subset (the reason is
        a :class:`BudgetError`)."""
        if cell.budget is None:
            return None
        overrides = hard_overrides(artifact.recipe)
        reference_recipe = evaluation_recipe(base, overrides, cell.protocol)
        teacher: dict[str, Any] = {}
        if result.reference_regime == "teacher":
            teacher = {k: t for k, t in artifact.tensors.items() if k.startswith(labels.TEACHER_PREFIX)}
            overrides = {**overrides, "teacher": artifact.recipe["teacher"]}
            reference_recipe = recipe
        teacher_hash = content_hash(Artifact(teacher)) if teacher else None
        key = json.dumps([cell.task, cell.task_options, str(cell.budget), cell.seed, cell.eval_seeds, cell.learner,
                          cell.learner_options, cell.profile, reference_recipe.as_dict(), teacher_hash], sort_keys=True, default=str)
        if key not in self._random_refs:
            try:
                reference = random_artifact(view, cell.budget, cell.seed)
            except BudgetError:
                return None
            if teacher:
                reference = Artifact({"x": reference.x, **teacher}, teacher=artifact.teacher)
            if reference_recipe == recipe and same_tensors(reference, artifact):
                self._random_refs[key] = result.mean
            else:
                reference.recipe = overrides
                admitted, _ = admit(reference, view, cell.budget, "the random reference", type(learner), self.manager.learners)
                admitted.teacher = reference.teacher
                scores = self._scores(task, view, test, learner, admitted, reference_recipe, cell)[0]
                self._random_refs[key] = statistics.fmean(s[task.metric] for s in scores)
        return self._random_refs[key]


def outputs(predict: Callable[[torch.Tensor], torch.Tensor], split: Split) -> torch.Tensor:
    """``predict`` over a split: at once where it is in memory, a chunk at a time where it is
    memory-mapped (:class:`~ddbench.contracts.interfaces.MappedSplit`)."""
    if not split.mapped:
        return predict(split.x)
    return torch.cat([predict(x) for x, _ in split.batches(MAPPED_CHUNK)])


def hard_overrides(declared: dict[str, Any]) -> dict[str, Any]:
    """What a reference in the hard regime keeps of an artifact's declared recipe: not a learned lr,
    implied labels or a teacher, which belong to that artifact."""
    return {k: v for k, v in declared.items() if k not in ("lr_from_artifact", "labels", "teacher")}


def same_tensors(a: Artifact, b: Artifact) -> bool:
    """Whether two artifacts hold the same named tensors (dtype, shape and values)."""
    return a.tensors.keys() == b.tensors.keys() and all(
        a.tensors[k].dtype == b.tensors[k].dtype and a.tensors[k].shape == b.tensors[k].shape
        and torch.equal(a.tensors[k].cpu(), b.tensors[k].cpu()) for k in a.tensors)


def run_length(meta: dict[str, Any]) -> dict[str, float]:
    """The :data:`RUN_LENGTH_META` numbers of an artifact's meta (others, and non-numbers, are left out)."""
    out = {}
    for key in RUN_LENGTH_META:
        value = meta.get(key)
        if isinstance(value, (bool, int, float)):
            out[key] = float(value)
    return out
