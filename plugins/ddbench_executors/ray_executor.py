"""The ``ray`` executor: each distillation's cells run in a Ray task, in a Ray worker process on any
node of a Ray cluster (a local one by default), and their results stream back to the driver,
which alone writes the store.

A task gets the cells of one distillation (its native and common cells, which share it, as under
the local executor) and runs them with a harness of its own: the same :meth:`Harness.run_cell`,
so each distillation still runs in a fresh cell worker (:mod:`ddbench.run.worker`) that never sees the
test split, and the evaluation trains the harness's own learners. The task gets the driver's
registries (the plugin classes, sent by reference: every node imports them from its own install),
the device type, the run's torch thread count (the driver's: a cell computes as it would locally,
so its numbers do not depend on the executor), the checkpoint interval, the cache and artifact
folders as absolute paths (shared by every node on a cluster) and the ``DDBENCH_*`` environment
(the data root). A worker that dies (killed, out of memory, its node lost) is retried ``retries``
times, and a retried distillation resumes from its last checkpoint in the shared cache; then its
cells fail. An exception in a task is not retried: a cell that fails stays failed. ``ray`` is
imported only when an executor is built.
"""
from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ddbench.contracts.executor import CellRunner, Executor
from ddbench.contracts.options import non_negative, positive
from ddbench.errors import SuiteError, one_line
from ddbench.results.records import Cell, CellResult
from ddbench.run.harness import Distilled, Harness, capped
from ddbench.run.local import components, distillations, rebuilt

INSTALL = 'pip install -e ".[ray]"'
WAIT_S = 0.5  # the longest the driver waits for Ray without looking at signals


class RayExecutor(Executor):
    """Cells as Ray tasks: ``address`` None starts a Ray instance on this machine for the run
    (``auto`` or ``HOST:PORT``: an existing cluster); each task asks Ray for ``cpus_per_cell`` CPUs
    (None: the run's torch thread count) and ``gpus_per_cell`` GPUs (a fraction lets cells share a
    GPU). The CPUs a task holds do not set its threads: every cell computes with the run's."""

    name = "ray"
    description = f"cells as Ray tasks on this machine's devices or a Ray cluster (needs {INSTALL})"
    cpus: float  # what a task of the current run holds: cpus_per_cell, else the run's threads (set by run())

    def __init__(self, address: str | None = None, gpus_per_cell: float = 0.0, cpus_per_cell: float | None = None,
                 retries: int = 2):
        positive(cpus_per_cell=cpus_per_cell)
        non_negative(gpus_per_cell=gpus_per_cell, retries=retries)
        if gpus_per_cell > 1 and gpus_per_cell != int(gpus_per_cell):
            raise ValueError(f"gpus_per_cell above 1 must be a whole number of GPUs (got {gpus_per_cell!r})")
        if retries != int(retries):
            raise ValueError(f"retries must be a whole number (got {retries!r})")
        try:
            import ray
        except ImportError:
            raise SuiteError(f"the ray executor needs Ray, which is not installed: {INSTALL} (in a ddbench checkout), "
                             "or pip install 'ray>=2.40,<3'.") from None
        self.ray = ray
        self.address = None if address in (None, "", "local") else str(address)
        self.gpus_per_cell, self.retries = float(gpus_per_cell), int(retries)
        self.cpus_per_cell = None if cpus_per_cell is None else float(cpus_per_cell)
        self._shared: dict[str, int] = {}  # node id -> how many cells of this run can share one of its devices
        self._where: dict[str, str] = {}  # cell key -> the node it ran on

    # -- the driver ---------------------------------------------------------------------------
    def check(self, harness: CellRunner) -> None:
        """A cuda run needs GPUs per cell, a cpu run none."""
        if harness.device.type == "cuda" and not self.gpus_per_cell:
            raise SuiteError("the ray executor runs cuda cells only with --gpus-per-cell (e.g. 1, or 0.25 for four cells "
                             "per GPU): Ray gives a task a GPU only when asked; or pass --device cpu.")
        if harness.device.type == "cpu" and self.gpus_per_cell:
            raise SuiteError("--gpus-per-cell with --device cpu would hold GPUs the cells do not use: pass --device cuda or leave it out.")

    def run(self, harness: CellRunner, cells: Sequence[Cell]) -> Iterator[CellResult]:
        self.check(harness)
        groups = distillations(cells)
        if not groups:
            return
        threads = harness.threads  # the run's, as the local executor computes with
        self.cpus = self.cpus_per_cell or float(threads)
        started = self._connect()
        try:
            yield from self._run(harness, groups, harness.device.type, threads)
        finally:
            if started:
                self.ray.shutdown()

    def _connect(self) -> bool:
        """Start or join Ray unless this process already did; whether it was started here."""
        ray = self.ray
        if ray.is_initialized():
            return False
        try:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        except Exception as exc:  # noqa: BLE001 - a cluster that cannot be reached is bad input, not a crash
            where = f"the Ray cluster at {self.address!r}" if self.address else "a Ray instance on this machine"
            fix = ("start one with `ray start --head` (or pass another --ray-address)" if self.address
                   else "check `ray start --head` works here, or pass --ray-address")
            raise SuiteError(f"cannot reach {where} ({one_line(exc)}): {fix}.") from None
        return True

    def _run(self, harness: CellRunner, groups: list[list[Cell]], device: str, threads: int) -> Iterator[CellResult]:
        ray = self.ray
        slots = self._capacity(len(groups))
        env = {k: v for k, v in os.environ.items() if k.startswith("DDBENCH_")}
        task = ray.remote(run_cells).options(
            num_cpus=self.cpus, num_gpus=self.gpus_per_cell, max_retries=self.retries, retry_exceptions=False,
            name="ddbench-cells", **({"runtime_env": {"env_vars": env}} if env else {}))
        setup = ray.put({"run": uuid.uuid4().hex, "components": components(harness.manager), "device": device,
                         "cache_dir": str(harness.cache_dir.resolve()), "threads": threads,
                         "checkpoint_every_s": harness.checkpoint_every_s,
                         "artifact_dir": None if harness.artifact_dir is None else str(harness.artifact_dir.resolve())})
        waiting, pending = list(groups), dict[Any, list[Cell]]()
        done = failed = 0
        total = sum(map(len, groups))
        try:
            while waiting or pending:
                while waiting and len(pending) < slots:
                    group = waiting.pop(0)
                    pending[task.remote(setup, group)] = group
                self._status(harness, done, sum(map(len, pending.values())), total - done, failed)
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)  # a timeout: Ctrl-C gets through
                for ref in ready:
                    for result in self._results(ref, pending.pop(ref)):
                        done += 1
                        failed += result.status == "failed"
                        yield result
            self._status(harness, done, 0, 0, failed)
        finally:
            for ref in pending:  # interrupted: stop what still runs
                ray.cancel(ref, force=True)

    def _results(self, ref: Any, group: list[Cell]) -> list[CellResult]:
        """The results of one task, or a failed result per cell when Ray could not run it to the end."""
        ray = self.ray
        try:
            results, node = ray.get(ref)
        except ray.exceptions.RayError as exc:
            why = one_line(exc)
            if isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError)):
                why = f"its Ray worker died {self.retries + 1} time(s), the last: {why}"
            return [CellResult(cell, "failed", error=f"the ray executor could not run this cell: {why}"[:1000],
                               traceback=capped(str(exc))) for cell in group]
        for result in results:
            self._where[result.cell.key()] = node
        return results

    def _capacity(self, groups: int) -> int:
        """How many tasks the cluster runs at once; records how many can share a device on each node.
        No node able to hold one cell is a one-line error (Ray would wait for one forever)."""
        per_node = {}
        for node in self.ray.nodes():
            if not node.get("Alive"):
                continue
            have = node.get("Resources", {})
            fits = math.floor(have.get("CPU", 0) / self.cpus + 1e-9)
            per_device = fits
            if self.gpus_per_cell:
                fits = min(fits, math.floor(have.get("GPU", 0) / self.gpus_per_cell + 1e-9))
                per_device = min(fits, math.floor(1 / self.gpus_per_cell + 1e-9)) if self.gpus_per_cell < 1 else 1
            per_node[node["NodeID"]] = fits
            self._shared[node["NodeID"]] = per_device if groups > 1 else 1
        if not any(per_node.values()):
            raise SuiteError(f"no node of the Ray cluster has {self.cpus:g} CPU(s) and {self.gpus_per_cell:g} GPU(s) "
                             "for one cell: lower --cpus-per-cell or --gpus-per-cell, or add nodes.")
        return sum(per_node.values())

    def _status(self, harness: CellRunner, done: int, running: int, left: int, failed: int) -> None:
        if harness.on_status is not None:
            harness.on_status(f"ray: {done} done, {running} running, {left - running} queued, {failed} failed")

    def provenance(self, result: CellResult) -> dict[str, Any]:
        """The node, the resources a cell held and how many cells of the run could share its device
        (``shared_device`` when more than one: the boards then say its timings are not a dedicated device's)."""
        node = self._where.get(result.cell.key())
        if node is None:
            return {"name": self.name}
        per_device = self._shared.get(node, 1)
        return {"name": self.name, "node": node, "cpus_per_cell": self.cpus, "gpus_per_cell": self.gpus_per_cell,
                "cells_per_device": per_device, "shared_device": per_device > 1}


# -- a Ray worker ------------------------------------------------------------------------------
_harness: tuple[str, Harness] | None = None  # this worker process's harness for the run it serves


def run_cells(setup: dict[str, Any], cells: list[Cell]) -> tuple[list[CellResult], str]:
    """The body of a Ray task: run ``cells`` (one distillation's) and return their results and this node's id."""
    global _harness
    import ray

    from ddbench.run import worker

    if _harness is None or _harness[0] != setup["run"]:
        worker.warm_allocator()
        manager = rebuilt(setup["components"])
        harness = Harness(manager, setup["device"], Path(setup["cache_dir"]), artifact_dir=setup["artifact_dir"],
                          threads=setup["threads"], checkpoint_every_s=setup["checkpoint_every_s"])
        harness.start_workers()
        _harness = (setup["run"], harness)
    harness = _harness[1]
    distilled: dict[str, Distilled] = {}
    results = [harness.run_cell(cell, "", distilled) for cell in cells]
    return results, ray.get_runtime_context().get_node_id()
