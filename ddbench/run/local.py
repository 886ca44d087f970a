"""The ``local`` executor: the cells of a suite on this machine, several distillations at once on a CPU.

On a CPU the cells run in ``workers`` cell hosts (default: one per core the process may use), each
a process with a harness of its own that runs whole distillations (a distillation's cells under
both protocols, which share it) with as many torch threads as the run gives a cell; the driver
hands out the distillations, largest budgets first, and collects each result as soon as it is
final, so the store is still written by the driver alone; the hosts share the run's evaluations
(:mod:`ddbench.run.memo`). A cell's numbers depend on its thread count, never on how many hosts
ran beside it. A host that dies (killed, out of memory) fails only
the cells it held, and a new one takes its place; a killed driver takes its hosts down with it.
On a GPU, with one worker, or with one distillation, the cells run one after the other in this
process. The ``ray`` executor (plugin ``executors``) reuses :func:`distillations`,
:func:`components` and :func:`rebuilt`.
"""
from __future__ import annotations

import os
import pickle
import signal
import tempfile
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, cast

import torch

from ddbench.contracts.executor import CellRunner, Executor, one_by_one
from ddbench.errors import one_line
from ddbench.plugins import PluginManager
from ddbench.results.records import Cell, CellResult
from ddbench.run import worker
from ddbench.run.harness import Distilled, Harness

WAIT_S = 0.5  # the longest the driver waits for a host without looking at signals


class LocalExecutor(Executor):
    """Cells on this machine: on a CPU, ``workers`` distillations at once (0: one per usable core),
    each in a cell host of its own; on a GPU, one after the other in this process."""

    name = "local"
    description = "cells on this machine: on a CPU one distillation per core at once, on a GPU one after the other (the default)"

    def __init__(self, workers: int = 0):
        if workers != int(workers) or workers < 0:
            raise ValueError(f"workers must be a whole number >= 0, 0 for one per core (got {workers!r})")
        self.workers = int(workers) or usable_cores()

    def run(self, harness: CellRunner, cells: Sequence[Cell]) -> Iterator[CellResult]:
        groups = distillations(cells)
        hosts = min(self.workers, len(groups)) if harness.device.type == "cpu" else 1
        if hosts > 1:
            setup = host_setup(harness)
            why = unsendable(setup)
            if why is None:
                yield from HostPool(setup, hosts).run(harness, largest_first(groups))
                return
            if harness.on_status is not None:
                harness.on_status(f"local: one cell at a time ({why})")
        yield from one_by_one(harness, cells)


def usable_cores() -> int:
    """How many CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def distillations(cells: Sequence[Cell]) -> list[list[Cell]]:
    """``cells`` in groups of one distillation each (its cells under both protocols), in order."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.distillation(), []).append(cell)
    return list(groups.values())


def largest_first(groups: list[list[Cell]]) -> list[list[Cell]]:
    """``groups`` with the largest budgets first (the whole split first, then by the budget's size;
    ties keep their order), so that the longest distillations do not start last."""
    def size(group: list[Cell]) -> float:
        budget = group[0].budget
        return float("inf") if budget is None else float(budget.value)
    return sorted(groups, key=size, reverse=True)


def components(manager: PluginManager) -> dict[str, Any]:
    """What a worker needs to rebuild ``manager`` (:func:`rebuilt`): its plugins and registered classes."""
    return {"plugins": dict(manager.plugins),
            "registries": {kind: (dict(r.items), dict(r.owner)) for kind, r in manager.registries.items()}}


def rebuilt(parts: dict[str, Any]) -> PluginManager:
    """A plugin manager holding the classes of :func:`components`, without loading entry points."""
    manager = PluginManager()
    manager.plugins.update(parts["plugins"])
    for kind, (items, owner) in parts["registries"].items():
        manager.registries[kind].items.update(items)
        manager.registries[kind].owner.update(owner)
    return manager


def host_setup(harness: CellRunner) -> dict[str, Any]:
    """What a cell host needs to build a harness like ``harness``: its registries, device, folders,
    threads, checkpoint interval and the ``DDBENCH_*`` environment (the data root)."""
    return {"components": components(harness.manager), "device": str(harness.device), "threads": harness.threads,
            "checkpoint_every_s": harness.checkpoint_every_s,
            "cache_dir": str(Path(harness.cache_dir).resolve()),
            "artifact_dir": None if harness.artifact_dir is None else str(Path(harness.artifact_dir).resolve()),
            "env": {k: v for k, v in os.environ.items() if k.startswith("DDBENCH_")}}


def unsendable(setup: dict[str, Any]) -> str | None:
    """Why ``setup`` cannot reach a cell host (a class defined inside a function, say), or ``None``."""
    try:
        pickle.dumps(setup)
    except Exception as exc:  # noqa: BLE001 - any pickling failure means the same: run in this process
        return f"the run's plugin classes cannot be sent to a cell host: {one_line(exc)}"
    return None


class HostPool:
    """``size`` cell hosts fed one distillation at a time."""

    def __init__(self, setup: dict[str, Any], size: int):
        self.setup, self.size = setup, size
        self.context = worker.mp_context()  # the driver's fork server (plugins imported): a host starts in milliseconds

    def run(self, harness: CellRunner, groups: list[list[Cell]]) -> Iterator[CellResult]:
        with tempfile.TemporaryDirectory(prefix="ddbench-evaluations-") as shared:
            yield from self._run(harness, groups, {**self.setup, "shared_evaluations": shared})

    def _run(self, harness: CellRunner, groups: list[list[Cell]], setup: dict[str, Any]) -> Iterator[CellResult]:
        waiting = list(groups)
        hosts: dict[Connection, tuple[Any, list[Cell]]] = {}  # a host's end -> (its process, the cells it still owes)
        total, done, failed = sum(map(len, groups)), 0, 0
        try:
            while waiting or any(owed for _, owed in hosts.values()):
                for conn, (process, owed) in list(hosts.items()):
                    if not owed and waiting:
                        group = waiting.pop(0)
                        conn.send(group)
                        hosts[conn] = (process, list(group))
                while len(hosts) < self.size and waiting:
                    conn, process = self._start(setup)
                    group = waiting.pop(0)
                    conn.send(group)
                    hosts[conn] = (process, list(group))
                self._status(harness, done, sum(len(o) for _, o in hosts.values()), total - done, failed)
                for ready in wait(list(hosts), timeout=WAIT_S):
                    conn = cast(Connection, ready)  # wait returns the connections it was given
                    process, owed = hosts[conn]
                    for result in self._receive(conn, process, owed):
                        done += 1
                        failed += result.status == "failed"
                        yield result
                    if not process.is_alive():  # died: its cells failed above, a new host takes its place
                        del hosts[conn]
                        conn.close()
            self._status(harness, done, 0, 0, failed)
        finally:
            for conn, (process, owed) in hosts.items():
                conn.close()  # a host waiting for cells exits; one still running cells (interrupted) is killed
                process.join(timeout=0 if owed else worker.JOIN_S)
                if process.is_alive():
                    process.kill()
                    process.join()

    def _start(self, setup: dict[str, Any]) -> tuple[Connection, Any]:
        mine, theirs = self.context.Pipe()
        process = self.context.Process(target=host, args=(setup, theirs), name="ddbench-cell-host")  # no daemon: it has children
        process.start()
        theirs.close()
        return mine, process

    def _receive(self, conn: Connection, process: Any, owed: list[Cell]) -> list[CellResult]:
        """The result a host sent, or a failed result for every cell it owed when it died."""
        try:
            result: CellResult = conn.recv()
        except (EOFError, OSError):
            process.join()
            code = process.exitcode
            why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            results = [CellResult(cell, "failed", error=f"the cell host running this cell died ({why})") for cell in owed]
            owed.clear()
            return results
        owed.remove(next(c for c in owed if c.key() == result.cell.key()))
        return [result]

    def _status(self, harness: CellRunner, done: int, running: int, left: int, failed: int) -> None:
        if harness.on_status is not None:
            harness.on_status(f"local: {done} done, {running} running, {left - running} queued, {failed} failed")


def host(setup: dict[str, Any], conn: Connection) -> None:
    """A cell host: build a harness from ``setup``, then run each group of cells the driver sends,
    sending back every result as soon as it is final."""

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle: it stops this host
    os.setpgid(0, 0)  # and the fork server and workers this host starts, which a terminal's Ctrl-C would reach before they ignore it
    worker.exit_with_parent()
    os.environ.update(setup["env"])
    torch.set_num_threads(setup["threads"])
    worker.warm_allocator()
    harness = Harness(rebuilt(setup["components"]), setup["device"], Path(setup["cache_dir"]),
                      artifact_dir=setup["artifact_dir"], threads=setup["threads"], checkpoint_every_s=setup["checkpoint_every_s"],
                      shared_evaluations=Path(setup["shared_evaluations"]))
    harness.start_workers()
    while True:
        try:
            group: list[Cell] = conn.recv()
        except EOFError:
            return
        distilled: dict[str, Distilled] = {}
        for cell in group:
            conn.send(harness.run_cell(cell, "", distilled))
