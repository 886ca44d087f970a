"""Analyses of distilled data, the fourth plugin kind (``docs/analyses.md``).

An :class:`Analysis` takes a :class:`Subject` (an artifact with the task, learner and evaluation
recipe it was scored with) and an :class:`AnalysisContext` (device, the shared cache, seeds) and
returns an :class:`Outcome`: named metrics, each declared by a :class:`Metric` (unit, direction,
the analysis's version), and result tensors (curves, matrices). ``ddbench.analysis.runner.run_analysis``
runs one and turns any failure into a failed :class:`AnalysisRow`, so a broken analysis never takes down the
others or the cells they read. Running analyses on saved artifacts is :mod:`ddbench.analysis.runner`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from ddbench.contracts.interfaces import Artifact, Component, Learner, Split, Task, TaskView
from ddbench.contracts.recipe import Recipe

if TYPE_CHECKING:  # the runner gives each analysis its context
    from ddbench.analysis.runner import AnalysisContext

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
