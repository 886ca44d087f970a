"""Executors: what runs the cells of a suite (the ``ddbench_register_executors`` plugin kind).

The harness expands a suite into cells, leaves out those already finished, and hands the rest to
an executor, which yields every cell's result as soon as it is final; ``ddbench run`` commits each
one to the store at once, so the store is written by the driver alone. The ``local`` executor
(:mod:`ddbench.run.local`, the default) runs them on this machine, each distillation in a fresh
cell worker (:mod:`ddbench.run.worker`); the ``ray`` executor (plugin ``executors``, extra ``ray``)
spreads them over a machine's devices or a Ray cluster (docs/executors.md).

What an executor says about how a cell ran goes into the cell's provenance (:meth:`Executor.provenance`);
:func:`shared_timing_note` is the line a board prints when some of its cells shared a device.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from ddbench.results.records import Cell, CellResult


class CellRunner(Protocol):
    """What an executor is handed: a :class:`ddbench.run.harness.Harness` (named by what executors use)."""

    manager: Any  # the ddbench.plugins.PluginManager whose classes the cells name
    device: Any  # the torch.device the cells run on
    threads: int  # the torch threads each cell computes with (its numbers depend on them)
    cache_dir: Path
    artifact_dir: Path | None
    checkpoint_every_s: float | None  # seconds between a distillation's checkpoints (None: none)
    on_status: Callable[[str], None] | None  # where an executor reports the state of the run, in one line

    def run_cell(self, cell: Cell, tag: str = "", distilled: dict[str, Any] | None = None) -> CellResult: ...  # Distilled records

    def start_workers(self) -> None: ...


class Executor(ABC):
    """Runs cells with a harness's plugins, device and folders.

    A registered executor is a class: ``name`` is its public name (``ddbench run --executor NAME``)
    and its constructor's keyword arguments are its options (``--executor NAME:k=v,...``)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    @abstractmethod
    def run(self, harness: CellRunner, cells: Sequence[Cell]) -> Iterator[CellResult]:
        """Yield the result of every cell in ``cells``, in any order, each as soon as it is final.

        A cell that cannot run yields a failed result (:meth:`Harness.run_cell` never raises); only
        an interruption (``KeyboardInterrupt``) or a setup error (a
        :class:`~ddbench.errors.DDBenchError`, before any cell ran) ends the iteration early."""

    def check(self, harness: CellRunner) -> None:  # noqa: B027 - optional: an executor that can always run leaves it empty
        """Raise a one-line :class:`~ddbench.errors.DDBenchError` when this executor cannot run cells
        with ``harness`` (its device, say); ``ddbench run`` asks before it writes anything."""

    def provenance(self, result: CellResult) -> dict[str, Any]:
        """What the store records of how ``result`` ran, under ``provenance["executor"]`` (nothing: ``{}``)."""
        return {}


def one_by_one(harness: CellRunner, cells: Sequence[Cell]) -> Iterator[CellResult]:
    """Run ``cells`` one after the other with ``harness`` in this process, the cell of a distillation
    under the second protocol reusing the first one's distillation: what ``Harness.run`` does
    without an executor, and the ``local`` executor on a GPU or with one worker."""
    harness.start_workers()
    distilled: dict[str, Any] = {}  # the last distillation (ddbench.run.harness.Distilled), for its cell under the other protocol
    for i, cell in enumerate(cells):
        yield harness.run_cell(cell, f"[{i + 1}/{len(cells)}]", distilled)
