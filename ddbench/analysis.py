"""Analyses of distilled data, the fourth plugin kind (``docs/analyses.md``).

An :class:`Analysis` takes a :class:`Subject` (an artifact with the task, learner and evaluation
recipe it was scored with) and an :class:`AnalysisContext` (device, the shared cache, seeds) and
returns an :class:`Outcome`: named metrics, each declared by a :class:`Metric` (unit, direction,
the analysis's version), and result tensors (curves, matrices). ``ddbench.analyze.run_analysis``
runs one and turns any failure into a failed :class:`AnalysisRow`, so a broken analysis never takes down the
others or the cells they read. Running analyses on saved artifacts is :mod:`ddbench.analyze`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ddbench.interfaces import Artifact, Component, Learner, Split, Task, TaskView
from ddbench.ops.cache import cache_key, fingerprint
from ddbench.recipe import Recipe

ANALYSIS_CACHE = "analyses"  # <cache_dir>/analyses/<key>.safetensors: the shared state analyses build once
SIZES = ("ci", "paper")
PROTOCOLS = ("paper", "native")


@dataclass(frozen=True)
class Metric:
    """One output of an analysis. ``name`` may end in ``@*`` for a family (``acc@*``: ``acc@0``,
    ``acc@10``, ...). ``higher_is_better`` is ``True``, ``False`` or ``None`` (descriptive)."""

    name: str
    unit: str
    higher_is_better: bool | None
    description: str = ""

    def covers(self, key: str) -> bool:
        if self.name.endswith("@*"):
            return key.startswith(self.name[:-1]) and len(key) > len(self.name) - 1
        return key == self.name


@dataclass
class Subject:
    """An artifact to analyse and what it was scored with: ``key`` is its store cell's key (or the
    artifact's content hash), ``recipe`` the evaluation recipe of its cell (the ``native`` protocol)."""

    key: str
    label: str
    artifact: Artifact
    task: Task
    view: TaskView
    test: Split
    learner: Learner
    learner_spec: str
    recipe: Recipe
    distiller: str = ""


@dataclass
class Outcome:
    """What an analysis returns: metric values (numbers or booleans), result tensors, and facts."""

    metrics: dict[str, float | bool]
    tensors: dict[str, Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class AnalysisContext:
    """The device, the cache of expensive shared state, and the progress callback of one analyze run."""

    def __init__(self, device: torch.device, cache_dir: Path | str = ".ddbench/cache",
                 progress: Callable[[str, int, int], None] | None = None):
        self.device = device
        self.cache_dir = Path(cache_dir)
        self.hits = 0
        self.misses = 0
        self._progress = progress

    def progress(self, what: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(what, done, total)

    def cached(self, subject: Subject, what: str, config: dict[str, Any],
               build: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        """Tensors ``build()`` returns, cached under (task and its train data, learner, ``what``,
        ``config``: the recipe, seeds and the analysis version), shared by every artifact of the task."""
        full = {"task": subject.view.name, "task_options": subject.view.options, "train": fingerprint(subject.view.train),
                "learner": subject.learner_spec, "what": what, **config}
        _, key = cache_key(full)
        path = self.cache_dir / ANALYSIS_CACHE / f"{what}-{key}.safetensors"
        if path.is_file():
            self.hits += 1
            return {k: v.to(self.device) for k, v in load_file(str(path)).items()}
        self.misses += 1
        tensors = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        tmp.replace(path)
        return tensors


class Analysis(Component, ABC):
    """What an analysis plugin registers (``ddbench_register_analyses``).

    Class attributes: ``name``, ``version`` (bump it when results change: part of cache keys and of
    every stored row) and ``metrics`` (every metric it may return). Constructor options are its
    settings; every analysis takes ``size`` (``ci``: CPU minutes; ``paper``: the paper's sizes) and
    ``protocol`` (``paper``: the probe trainer, full batch, 300 steps; ``native``: the artifact's
    evaluation recipe).
    """

    version: ClassVar[str] = "1"
    metrics: ClassVar[tuple[Metric, ...]] = ()
    regimes: ClassVar[tuple[str, ...]] = ("hard", "soft")

    @abstractmethod
    def analyze(self, subject: Subject, context: AnalysisContext) -> Outcome:
        """Analyse one artifact; draw every random number from explicitly seeded generators."""


def check_size_protocol(size: str, protocol: str) -> None:
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)} (got {size!r})")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)} (got {protocol!r})")


@dataclass
class AnalysisRow:
    """One analysis of one artifact, as the store keeps it."""

    key: str
    analysis: str
    spec: str
    version: str
    task: str
    distiller: str
    label: str
    status: str = "failed"
    metrics: dict[str, float | bool] = field(default_factory=dict)
    declared: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    tensors_path: str = ""
    seconds: float = 0.0
    error: str = ""
    traceback: str = ""


