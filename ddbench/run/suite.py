"""Suites: which tasks, distillers, budgets and seeds a run covers (TOML files or the CLI).

A suite file::

    name = "my-suite"
    profile = "quick"          # or "full": the spec's sizes
    eval_seeds = 3             # K learners trained on every artifact (seeds 0..K-1)
    distill_seeds = [0]
    protocols = ["native", "common"]   # default ["native"]; common: tasks with a common recipe only
    # threads = 2              # torch threads every cell computes with (default 1)

    [[task]]
    name = "digits"
    budgets = ["ipc=1", "ipc=10"]
    # learner = "convnet"; learner_options = {width = 64}; options = {...}

    [[distiller]]
    name = "random"
    # options = {...}

With no ``[[distiller]]`` table, every registered distiller runs (those that do not apply to a
task are skipped with the reason) but those that must be given an option to run
(:attr:`~ddbench.contracts.interfaces.Distiller.in_every_suite`, such as ``file``).

:func:`expand_suite` turns a suite into its cells with the plugins of a manager, and
:func:`load_task` loads one task and its view: the harness, ``ddbench leaderboard --suite`` and
the measurement commands of plugins use them, none of them building a harness to get there;
:func:`load_view` gives only the view (no test split), which :func:`view_opener` serves to a
distiller that reads a second task (:meth:`~ddbench.contracts.interfaces.RunContext.source_view`) outside the harness.
"""
from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ddbench.contracts.interfaces import Split, Task, TaskData, TaskView
from ddbench.errors import BudgetError, DDBenchWarning, SuiteError, close_names
from ddbench.plugins import PluginManager, instantiate, parse_named
from ddbench.results.records import Cell
from ddbench.vocab import PROTOCOLS, Budget

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROFILES = ("quick", "full")
MAX_SEED = 2**31 - 1  # distillation seeds: 0 .. MAX_SEED (seeds of derived generators stay within 64 bits)
MAX_EVAL_SEEDS = 1000
SUITE_KEYS = {"name", "profile", "eval_seeds", "distill_seeds", "task", "distiller", "time_limit_s", "protocols", "analyses",
              "threads"}
MAX_THREADS = 1024
TASK_KEYS = {"name", "options", "budgets", "learner", "learner_options"}
DISTILLER_KEYS = {"name", "options"}


@dataclass
class TaskEntry:
    name: str
    budgets: list[Budget]
    options: dict[str, Any] = field(default_factory=dict)
    learner: str | None = None
    learner_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DistillerEntry:
    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Suite:
    name: str
    tasks: list[TaskEntry]
    distillers: list[DistillerEntry] | None  # None: every registered distiller
    profile: str = "quick"
    eval_seeds: int = 3
    distill_seeds: list[int] = field(default_factory=lambda: [0])
    time_limit_s: float | None = None
    protocols: list[str] = field(default_factory=lambda: ["native"])
    analyses: list[str] = field(default_factory=list)  # analysis specs run on every native cell's artifact afterwards
    threads: int | None = None  # torch threads of every cell, under every executor (None: 1)


def _check_keys(where: str, table: dict[str, Any], allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            raise SuiteError(f"{where}: unknown key {key!r}.{close_names(key, allowed)} Allowed: {', '.join(sorted(allowed))}.")


def _need(where: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise SuiteError(f"{where}: {what} (got {value!r}).")
    return value


def parse_suite(data: dict[str, Any], source: str = "suite") -> Suite:
    """Validate a suite table; every problem is a one-line :class:`SuiteError` naming the key."""
    _check_keys(source, data, SUITE_KEYS)
    profile = data.get("profile", "quick")
    if profile not in PROFILES:
        raise SuiteError(f"{source}: profile must be one of {PROFILES} (got {profile!r}).")
    eval_seeds = check_eval_seeds(_need(source, data.get("eval_seeds", 3), int, "eval_seeds must be a positive integer"),
                                  f"{source}: eval_seeds")
    seeds = _need(source, data.get("distill_seeds", [0]), list, "distill_seeds must be a list of integers")
    check_distill_seeds([_need(source, s, int, "distill_seeds must be a list of integers") for s in seeds], f"{source}: distill_seeds")
    raw_tasks = _need(source, data.get("task"), list, "needs at least one [[task]] table with a name and budgets")
    tasks = []
    for i, t in enumerate(raw_tasks):
        where = f"{source}: [[task]] #{i + 1}"
        _need(where, t, dict, "must be a table")
        _check_keys(where, t, TASK_KEYS)
        name = _need(where, t.get("name"), str, "needs name = \"<task>\"")
        budgets = _need(where, t.get("budgets", []), list, "budgets must be a list such as [\"ipc=10\", \"params=5000\"]")
        try:
            parsed = [Budget.parse(b) for b in budgets]
        except BudgetError as exc:
            raise SuiteError(f"{where} ({name}): {exc}") from exc
        learner = t.get("learner")
        if learner is not None:
            _need(where, learner, str, "learner must be a learner's name, e.g. learner = \"convnet\"")
        tasks.append(TaskEntry(name, parsed, _need(where, t.get("options", {}), dict, "options must be a table"),
                               learner, _need(where, t.get("learner_options", {}), dict, "learner_options must be a table")))
    distillers = None
    if "distiller" in data:
        distillers = []
        for i, d in enumerate(_need(source, data["distiller"], list, "[[distiller]] must be an array of tables")):
            where = f"{source}: [[distiller]] #{i + 1}"
            _need(where, d, dict, "must be a table")
            _check_keys(where, d, DISTILLER_KEYS)
            distillers.append(DistillerEntry(_need(where, d.get("name"), str, "needs name = \"<distiller>\""),
                                             _need(where, d.get("options", {}), dict, "options must be a table")))
    limit = data.get("time_limit_s")
    if limit is not None:
        limit = check_time_limit(_need(source, limit, (int, float), "time_limit_s must be a number of seconds"),
                                 f"{source}: time_limit_s")
    protocols = check_protocols(_need(source, data.get("protocols", ["native"]), list,
                                      'protocols must be a list such as ["native", "common"]'), f"{source}: protocols")
    analyses = data.get("analyses", [])
    if not isinstance(analyses, list) or not all(isinstance(a, str) and a.strip() for a in analyses):
        raise SuiteError(f"{source}: analyses must be a list of analysis names, e.g. [\"mixing\", \"recognition\"] (got {analyses!r}).")
    threads = data.get("threads")
    if threads is not None:
        threads = check_threads(_need(source, threads, int, "threads must be a positive integer"), f"{source}: threads")
    return Suite(str(data.get("name", Path(source).stem)), tasks, distillers, profile, eval_seeds, list(seeds), limit, protocols,
                 list(analyses), threads)


def check_protocols(protocols: list[Any], where: str) -> list[str]:
    """``protocols`` if it is a non-empty list of distinct :data:`~ddbench.vocab.PROTOCOLS`, else a one-line error."""
    if not protocols:
        raise SuiteError(f"{where} needs at least one protocol: {' or '.join(PROTOCOLS)}.")
    for name in protocols:
        if name not in PROTOCOLS:
            raise SuiteError(f"{where}: unknown protocol {name!r}.{close_names(str(name), PROTOCOLS)} Protocols: {', '.join(PROTOCOLS)}.")
    if len(set(protocols)) < len(protocols):
        raise SuiteError(f"{where} names a protocol twice ({', '.join(protocols)}): name each once.")
    return list(protocols)


def has_common_protocol(task_cls: type[Task]) -> bool:
    """Whether ``task_cls`` declares a common recipe, i.e. overrides :meth:`Task.common_recipe` (decided
    from the class, so expanding a suite loads no data; an override that returns ``None`` makes the
    harness skip the cell with the reason)."""
    return getattr(task_cls, "common_recipe", Task.common_recipe) is not Task.common_recipe


def check_seed(seed: int, where: str) -> int:
    if not 0 <= seed <= MAX_SEED:
        raise SuiteError(f"{where}: a seed must be an integer from 0 to {MAX_SEED} (got {seed}).")
    return seed


def check_distill_seeds(seeds: list[int], where: str) -> list[int]:
    """``seeds`` if it is a non-empty list of distinct seeds (:func:`check_seed`), else a one-line error:
    a seed named twice would run as one cell, and the run would have fewer seeds than it says."""
    if not seeds:
        raise SuiteError(f"{where} needs at least one seed, e.g. 0,1,2.")
    for seed in seeds:
        check_seed(seed, where)
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise SuiteError(f"{where} names seed {', '.join(map(str, twice))} more than once ({', '.join(map(str, seeds))}): "
                         "name each seed once.")
    return list(seeds)


def check_eval_seeds(count: int, where: str) -> int:
    if not 1 <= count <= MAX_EVAL_SEEDS:
        raise SuiteError(f"{where} must be a positive integer up to {MAX_EVAL_SEEDS} (got {count}).")
    return count


def check_threads(count: int, where: str) -> int:
    if not 1 <= count <= MAX_THREADS:
        raise SuiteError(f"{where} must be a number of threads from 1 to {MAX_THREADS} (got {count}).")
    return count


def check_time_limit(seconds: float, where: str) -> float:
    if not (math.isfinite(seconds) and seconds > 0):
        raise SuiteError(f"{where} must be a positive number of seconds (got {seconds}).")
    return float(seconds)  # 45 and 45.0 are one setting, and one cell key


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite TOML file."""
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file {str(path)!r} not found: pass an existing .toml file (see ddbench/run/default.toml).")
    try:
        data = tomllib.loads(path.read_text())
    except UnicodeDecodeError as exc:
        raise SuiteError(f"suite file {str(path)!r} is not text ({exc.reason}): pass a .toml file.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"suite file {str(path)!r} is not valid TOML: {exc}.") from exc
    return parse_suite(data, str(path))


def default_suite() -> Suite:
    """The quick suite ``ddbench run`` uses with no arguments (ships inside the package)."""
    text = resources.files("ddbench").joinpath("run/default.toml").read_text()
    return parse_suite(tomllib.loads(text), "default.toml")


def expand_suite(manager: PluginManager, suite: Suite, device_type: str = "cpu") -> Iterator[Cell]:
    """The cells of ``suite`` with the plugins of ``manager``, every name and option checked up front;
    ``device_type`` (``cpu`` or ``cuda``) is part of each cell's key. A distillation's cells under
    the suite's protocols come one after the other (the harness distils once for them); ``common``
    cells exist only for tasks with a common recipe (:func:`has_common_protocol`)."""
    distillers = suite.distillers
    if distillers is None:
        distillers = [DistillerEntry(n) for n in manager.names("distiller") if manager.distillers.get(n).in_every_suite]
    for entry in distillers:  # built once here, so that a bad option value is an error before any cell runs
        instantiate(manager.distillers.get(entry.name), entry.options, suite.profile)
    for t in suite.tasks:
        task_cls = manager.tasks.get(t.name)
        instantiate(task_cls, t.options, suite.profile)
        learner = t.learner or task_cls.default_learner
        instantiate(manager.learners.get(learner), t.learner_options, suite.profile)
        if task_cls.kind == "regression" and any(b.kind == "ipc" for b in t.budgets):
            raise SuiteError(f"task {t.name!r} is regression: ipc budgets do not apply; use params=N.")
        if not t.budgets:
            raise SuiteError(f"task {t.name!r} has no budgets: give at least one, e.g. ipc=10 or params=5000.")
        protocols = [p for p in suite.protocols if p == "native" or has_common_protocol(task_cls)]
        if not protocols:
            warnings.warn(f"task {t.name!r} has no common protocol (Task.common_recipe), and the suite runs only "
                          "protocol common: it has no cells; add protocol native to run it.", DDBenchWarning, stacklevel=2)
        for d in distillers:
            exempt = manager.distillers.get(d.name).budget_exempt
            for budget in ([None] if exempt else t.budgets):
                for seed in suite.distill_seeds:
                    for protocol in protocols:
                        yield Cell(t.name, t.options, d.name, d.options, budget, seed, list(range(suite.eval_seeds)),
                                   learner, t.learner_options, suite.profile, suite.time_limit_s, device_type, protocol=protocol)


def check_budgets(cells: Iterable[Cell], view: Callable[[str, dict[str, Any], str], TaskView]) -> None:
    """Refuse, in one line, a budget that holds more than its task's whole train split: such a cell
    would not distil anything (a method could store the whole split) yet be ranked as a budgeted one.
    ``view(task, options, profile)`` loads a task's view; a task that cannot load is left to its
    cells, which fail with the reason."""
    seen: set[str] = set()
    for cell in cells:
        key = json.dumps([cell.task, cell.task_options, cell.profile, str(cell.budget)], sort_keys=True, default=str)
        if cell.budget is None or key in seen:
            continue
        seen.add(key)
        try:
            loaded = view(cell.task, cell.task_options, cell.profile)
        except Exception:  # noqa: BLE001 - a task that cannot load fails its own cells, with the reason, as always
            continue
        full = len(loaded.train) * (loaded.input_size + 1)
        if cell.budget.scalars(loaded) > full:
            raise SuiteError(f"budget {cell.budget} holds more than the whole train split of task {cell.task!r} ({len(loaded.train)} "
                             f"examples, {full} scalars): use a smaller budget; the whole split is the budget-exempt `full` row.")


def prepare_tasks(manager: PluginManager, cells: Iterable[Cell]) -> None:
    """:meth:`Task.prepare_data` of every task of ``cells`` (once per task and options): files found,
    downloaded where allowed, caches built, so that a missing or damaged dataset is a one-line error
    before any cell runs."""
    seen = set()
    for cell in cells:
        key = json.dumps([cell.task, cell.task_options, cell.profile], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            instantiate(manager.tasks.get(cell.task), cell.task_options, cell.profile).prepare_data()


def task_view(task: Task, data: TaskData, device: torch.device | str, name: str | None = None,
              options: dict[str, Any] | None = None) -> TaskView:
    """What a distiller sees of a loaded task: train and validation on ``device`` (:meth:`Task.to_device`), never the test split."""
    return TaskView(name or task.name, task.kind, task.num_classes, tuple(task.input_shape), task.to_device(data.train, device),
                    task.to_device(data.val, device), task.info(), dict(options or {}))


def load_view(manager: PluginManager, name: str, options: dict[str, Any], profile: str, device: torch.device | str) -> TaskView:
    """Only the view a distiller gets of task ``name`` (train and validation on ``device``): the task
    loads its three splits, and the test split is dropped here, before anything moves to ``device``."""
    task = instantiate(manager.tasks.get(name), options, profile)
    return task_view(task, task.load(), device, name, options)


def view_opener(manager: PluginManager, profile: str, device: torch.device | str) -> Callable[[str], TaskView]:
    """What :meth:`RunContext.source_view` calls outside the harness (in a test, the conformance
    kit): a task spec (``name:key=value,...``) -> its :func:`load_view` with ``manager``'s plugins."""
    return lambda spec: load_view(manager, *parse_named(spec), profile, device)


def load_task(manager: PluginManager, name: str, options: dict[str, Any], profile: str,
              device: torch.device | str) -> tuple[Task, TaskView, Split]:
    """The task ``name`` built with ``options`` under ``profile``, the view distillers get (train and
    validation on ``device``) and the test split on ``device``."""
    task = instantiate(manager.tasks.get(name), options, profile)
    data = task.load()
    return task, task_view(task, data, device, name, options), task.to_device(data.test, device)
