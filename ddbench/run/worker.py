"""The cell worker: every distillation runs in a fresh process that holds only what it may see.

Each cell's distillation runs in a new child process, forked from a server process that has
torch and the plugins imported (multiprocessing's ``forkserver``; ``spawn`` where there is none),
so a start costs milliseconds and the child inherits nothing of the harness: not the test split,
not the evaluation learner, not an earlier cell's tensors or global torch settings. The child is
given

- the task's train and validation splits, read from a file the harness writes once per task
  (:func:`write_view`), and the task's public description (name, kind, classes, input shape,
  ``info``, options);
- the distiller and learner *classes*, sent by reference (so they must be defined at module level
  of an importable module), with their options and the profile: it builds fresh instances;
- the budget, the seed, the device, the time limit, the cache folder, the torch thread count and
  the distillation's checkpoint store (:mod:`ddbench.contracts.checkpoint`), whose one-line
  warnings (a checkpoint ignored) the harness shows.

A distiller that reads another task (:meth:`~ddbench.contracts.interfaces.RunContext.source_view`) asks the
harness for it by name: the harness loads the task with the run's plugins and answers with a file
of its train and validation splits, written as the cell's own (:func:`write_view`), and records the
name in the reply (``sources``).

What comes back is the only channel from a distiller to the evaluation: the artifact's tensors as
safetensors bytes, its declared recipe and meta as JSON. Messages are JSON, never pickle, so a
child cannot make the harness run code. The harness measures the distillation time itself
(between the child's "started" and "finished" messages) and reads the child's peak resident
memory from ``/proc`` (CUDA: the child's own peak allocation). The time limit is a soft signal
(``context.should_stop()``) plus a hard kill :func:`grace_s` seconds after it; a child that exits,
is killed or crashes fails its cell only. The random reference of "gain vs random" is no
distillation: the harness draws that subset itself from the split it holds
(:func:`ddbench.ops.subsets.random_artifact`). See docs/threat-model.md.
"""
from __future__ import annotations

import ctypes
import json
import multiprocessing
import multiprocessing.forkserver
import os
import pickle
import resource
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddbench.budget import labels
from ddbench.budget.artifact import check_boundary, from_bytes, to_bytes
from ddbench.contracts.checkpoint import CheckpointStore
from ddbench.contracts.interfaces import Distiller, MappedSplit, Progress, RunContext, Split, TaskView
from ddbench.errors import DDBenchError, DDBenchWarning, NotApplicable, TaskDataError, one_line, show_warning
from ddbench.vocab import Budget

ProgressCallback = Callable[[int, "int | None", "dict[str, float]"], None]
ViewOpener = Callable[[str], "ViewSpec"]  # the harness's side of RunContext.source_view: a task spec -> its view's file

PRELOAD = ("ddbench.run.worker", "torch._dynamo", "ddbench.run.lifeline")
"""Imported once by the fork server, beside the plugins. ``torch._dynamo`` is what torch.optim
imports on its first step (about a second, with sympy): paid there, not in every worker;
:mod:`ddbench.run.lifeline` ties the server's life to its starter's."""
PROGRESS_EVERY_S = 0.2  # seconds between a child's progress messages (the last one always goes)
MAX_MESSAGE = 64 << 20  # bytes of one JSON message from a child (progress, recipe, meta)
POLL_S = 0.5
JOIN_S = 5.0
WARM_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
"""glibc malloc settings of the fork server, which its workers inherit. A fresh process starts with a
128 KiB mmap threshold and returns freed memory to the system, so its large tensors page-fault
afresh on every allocation: on this project's 2-core CPU box, DM at ipc=1 on digits took 1.6 s in
a fresh process and 0.9 s in one that had run for a while. A 32 MiB threshold and no trimming (a
worker exits anyway) give each worker the warmed behaviour. Other C libraries ignore them."""


CHECKPOINT_EVERY_S = 300.0
"""Seconds between a distillation's checkpoints unless the run says otherwise (``--checkpoint-every``)."""
LABEL_BYTES = 512 << 20
"""The most bytes of label-regime tensors (``teacher.*``, ``bank.*``) the harness reads beyond an
artifact's budget bound; they are charged on top of the budget (docs/labels.md). ResNet-18 is
45 MB in float32, ResNet-34 85 MB."""


def grace_s(time_limit_s: float) -> float:
    """How long a distiller may run past its time limit before it is killed: 10 s or a tenth of the limit."""
    return max(10.0, 0.1 * time_limit_s)


# --------------------------------------------------------------------------------------------
# What a child is given
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewSpec:
    """A task view without its tensors, and the safetensors file that holds its train and validation
    splits; ``mapped``: for a memory-mapped split (:class:`~ddbench.contracts.interfaces.MappedSplit`),
    its image file and normalisation by part (``train``, ``val``), the file holding its rows and labels."""

    name: str
    kind: str
    num_classes: int | None
    input_shape: tuple[int, ...]
    info: dict[str, Any]
    options: dict[str, Any]
    path: str
    mapped: dict[str, dict[str, Any]] = field(default_factory=dict)


def write_view(view: TaskView, path: Path) -> ViewSpec:
    """Write the view's train and validation splits to ``path`` (never the test split, which a view lacks);
    of a memory-mapped split only its rows and labels: the worker maps the same image file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, mapped = {}, {}
    for part, split in (("train", view.train), ("val", view.val)):
        if isinstance(split, MappedSplit):
            tensors[f"{part}.rows"] = split.rows
            mapped[part] = {"path": split.path, "mean": list(split.mean), "std": list(split.std)}
        else:
            tensors[f"{part}.x"] = split.x
        tensors[f"{part}.y"] = split.y
    path.write_bytes(to_bytes(tensors))
    return ViewSpec(view.name, view.kind, view.num_classes, tuple(view.input_shape), dict(view.info), dict(view.options), str(path),
                    mapped)


def read_view(spec: ViewSpec, device: torch.device) -> TaskView:
    """The view a distiller gets, its tensors read from the file into this process and moved to ``device``."""
    tensors = from_bytes(Path(spec.path).read_bytes(), "the task view")

    def split(part: str) -> Split:
        if part in spec.mapped:
            m = spec.mapped[part]
            return MappedSplit(m["path"], tensors[f"{part}.rows"], tensors[f"{part}.y"], m["mean"], m["std"], device)
        return Split(tensors[f"{part}.x"].to(device), tensors[f"{part}.y"].to(device))

    return TaskView(spec.name, spec.kind, spec.num_classes, spec.input_shape, split("train"), split("val"),  # type: ignore[arg-type]  # kind is checked where the view is written
                    spec.info, spec.options)


@dataclass(frozen=True)
class DistillRequest:
    """Everything a child needs for one distillation (pickled to it: the classes by reference)."""

    distiller: type[Distiller]
    distiller_options: dict[str, Any]
    learner: type
    learner_options: dict[str, Any]
    profile: str
    view: ViewSpec
    budget: Budget | None
    seed: int
    device: str
    time_limit_s: float | None
    cache_dir: str
    threads: int
    checkpoint: CheckpointStore | None = None  # None: the distillation saves and restores nothing


@dataclass
class DistillReply:
    """What came back: ``ok`` (with the parsed tensors, the declared recipe and meta), ``skipped``
    (``error`` is the distiller's reason) or ``failed``. ``recipe`` is as declared: unchecked."""

    status: str
    error: str = ""
    traceback: str = ""
    tensors: dict[str, Tensor] = field(default_factory=dict)
    recipe: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    distill_s: float = 0.0
    peak_mb: float = 0.0
    sources: list[str] = field(default_factory=list)  # the other tasks' views the distiller read, as asked for
    resumed_from: int = 0  # the step a checkpoint restored (0: the distillation ran from the beginning)


# --------------------------------------------------------------------------------------------
# The harness's side
# --------------------------------------------------------------------------------------------
_context: Any = None


def warm_allocator() -> None:
    """Apply :data:`WARM_MALLOC` to this running process (glibc ``mallopt``; elsewhere nothing):
    ``ddbench run`` does, so that its evaluations allocate as they did when distillations warmed
    its heap. A library user's process is left alone."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, int(WARM_MALLOC["MALLOC_MMAP_THRESHOLD_"]))  # M_MMAP_THRESHOLD
    mallopt(-1, int(WARM_MALLOC["MALLOC_TRIM_THRESHOLD_"]))  # M_TRIM_THRESHOLD


def mp_context(preload: Iterable[str] = ()) -> Any:
    """The multiprocessing context of cell workers, starting the fork server (which imports
    ``preload`` once) on first use."""
    global _context
    if _context is None:
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload([*PRELOAD, *sorted(set(preload))])
            saved = {k: os.environ.get(k) for k in WARM_MALLOC}
            os.environ.update({k: os.environ.get(k) or v for k, v in WARM_MALLOC.items()})
            try:
                multiprocessing.forkserver.ensure_running()  # the server reads them as it starts
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key)
                    else:
                        os.environ[key] = value
        _context = ctx
    return _context


def distill(request: DistillRequest, on_progress: ProgressCallback | None = None,
            max_artifact_bytes: int | None = None, open_view: ViewOpener | None = None) -> DistillReply:
    """Run one distillation in a fresh child and wait for it; never raises for what the child does.

    ``max_artifact_bytes`` bounds the artifact bytes the harness accepts (an over-budget artifact
    is refused before it is read whole). ``open_view`` serves the child's requests for other tasks'
    views (``None``: it may read none).
    """
    unsendable = _unsendable(request)
    if unsendable:
        return DistillReply("failed", error=unsendable)
    ctx = mp_context()
    receiver, sender = ctx.Pipe()  # duplex: the child's requests for views are answered
    process = ctx.Process(target=_child, args=(request, sender), name=f"ddbench-worker-{request.distiller.name}")
    try:
        try:
            process.start()
        finally:
            sender.close()
        return _receive(process, receiver, request, on_progress, max_artifact_bytes, open_view)
    except BaseException:  # Ctrl-C in the harness: stop the child at once
        if process.is_alive():
            process.kill()
        raise
    finally:
        receiver.close()
        if process.pid is not None:
            process.join(JOIN_S)  # a child that sent its result exits at once
            if process.is_alive():
                process.kill()
                process.join()


def _unsendable(request: DistillRequest) -> str:
    """Why the request cannot be pickled to a child ('' when it can): the classes go by reference."""
    for what, cls in (("distiller", request.distiller), ("learner", request.learner)):
        try:
            pickle.dumps(cls)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            return (f"{what} class {cls.__module__}.{cls.__qualname__} cannot be sent to a cell worker ({exc}): "
                    "define it at module level of an importable module.")
    try:
        pickle.dumps((request.distiller_options, request.learner_options, request.view))
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        return f"the options or task info of this cell cannot be sent to a cell worker ({exc}): use plain values."
    return ""


def _receive(process: Any, receiver: Connection, request: DistillRequest, on_progress: ProgressCallback | None,
             max_artifact_bytes: int | None, open_view: ViewOpener | None) -> DistillReply:
    """Read the child's messages, answering its requests for views, until its result, its death or
    the hard time limit."""
    limit = request.time_limit_s
    started = finished = None  # when the child said distill() started and returned (the harness's clock)
    peak_mb = 0.0
    sources: list[str] = []

    def elapsed() -> float:
        return 0.0 if started is None else (finished or time.monotonic()) - started

    def failed(error: str) -> DistillReply:
        return DistillReply("failed", error=error, distill_s=elapsed(), peak_mb=peak_mb, sources=sources)

    while True:
        deadline: float | None = None if limit is None or started is None or finished is not None else started + limit + grace_s(limit)
        if deadline is not None and time.monotonic() > deadline:
            assert limit is not None
            peak_mb = _peak_rss_mb(process.pid) or peak_mb
            process.kill()
            return failed(f"exceeded time limit: still distilling {limit + grace_s(limit):g} s after it started "
                          f"({limit:g} s limit + {grace_s(limit):g} s grace), so its worker was killed")
        if not receiver.poll(POLL_S if deadline is None else min(POLL_S, max(0.0, deadline - time.monotonic()))):
            if not process.is_alive():
                break
            if finished is None:  # the peak so far, in case the child dies before it finishes
                peak_mb = _peak_rss_mb(process.pid) or peak_mb
            continue
        try:
            message = json.loads(receiver.recv_bytes(MAX_MESSAGE))
            kind = message["kind"]
            if kind == "progress" and on_progress is not None:
                on_progress(int(message["step"]), None if message["total"] is None else int(message["total"]),
                            {str(k): float(v) for k, v in message["metrics"].items()})
            elif kind == "view":
                receiver.send(_served_view(str(message["spec"]), open_view, sources))
            elif kind == "warning":
                warnings.warn(DDBenchWarning(str(message["text"])[:1000]), stacklevel=1)
            elif kind == "started":
                started = time.monotonic()
            elif kind == "finished":
                finished = time.monotonic()
                peak_mb = _peak_rss_mb(process.pid) or float(message["peak_mb"])
                if message.get("cuda_peak_mb") is not None:
                    peak_mb = float(message["cuda_peak_mb"])
            elif kind == "result":
                reply = _result(message, receiver, request, max_artifact_bytes)
                reply.distill_s, reply.peak_mb, reply.sources = elapsed(), peak_mb, sources
                return reply
        except EOFError:
            break
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            return failed(f"the cell worker sent a malformed message ({type(exc).__name__}: {exc})")
    process.join(JOIN_S)
    return failed(_exit_reason(process.exitcode))


def _served_view(spec: str, open_view: ViewOpener | None, sources: list[str]) -> ViewSpec | DDBenchError:
    """The answer to a child's request for task ``spec``'s view: its file (``spec`` is recorded in
    ``sources``), or the one-line error that refused it, which the child raises. Pickled to the
    child: the harness's messages may be, a child's never are."""
    try:
        if open_view is None:
            raise DDBenchError(f"this distillation may read no other task (it asked for {spec!r})")
        view = open_view(spec)
    except DDBenchError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - a task that fails to load fails the asking cell, not the run
        return TaskDataError(f"task {spec!r} could not be loaded: {one_line(exc)}")
    sources.append(spec)
    return view


def _result(header: dict[str, Any], receiver: Connection, request: DistillRequest, max_artifact_bytes: int | None) -> DistillReply:
    status = str(header["status"])
    if status not in ("ok", "skipped", "failed"):
        raise ValueError(f"unknown status {status!r}")
    reply = DistillReply(status, error=str(header.get("error", "")), traceback=str(header.get("traceback", "")))
    reply.resumed_from = max(0, int(header.get("resumed_from", 0)))
    if status != "ok":
        return reply
    if max_artifact_bytes is not None:  # room for what the child says are label tensors (their names are checked when parsed)
        max_artifact_bytes += min(max(int(header.get("label_bytes", 0)), 0), LABEL_BYTES)
    try:
        data = receiver.recv_bytes(max_artifact_bytes)
    except OSError as exc:
        if "bad message length" not in str(exc):
            raise
        return DistillReply("failed", error=f"the artifact of {request.distiller.name!r} is larger than its budget "
                                            f"{request.budget} can hold ({max_artifact_bytes} bytes at most): store less.")
    reply.tensors = from_bytes(data, request.distiller.name)
    reply.recipe = header.get("recipe", {})
    meta = header.get("meta", {})
    reply.meta = meta if isinstance(meta, dict) else {"meta": meta}
    return reply


def _peak_rss_mb(pid: int | None) -> float:
    """The peak resident memory (VmHWM) of a running process from /proc, in MiB (0 where unknown)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "the cell worker stopped answering and was killed"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the cell worker was killed by {name} before returning an artifact (a crash in native code, a kill, or out of memory)"
    return f"the cell worker exited with status {code} before returning an artifact (sys.exit or os._exit in a plugin?)"


# --------------------------------------------------------------------------------------------
# The child's side
# --------------------------------------------------------------------------------------------
class _Channel:
    """The child's end of the pipe: JSON messages, then the artifact bytes."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.last = 0.0
        self.context: RunContext | None = None  # the distillation's, once built (its resumed_from goes with a failure)

    def send(self, message: dict[str, Any]) -> None:
        self.conn.send_bytes(json.dumps(message).encode())

    def view(self, spec: str, device: torch.device) -> TaskView:
        """Task ``spec``'s view, asked of the harness (:func:`_served_view`) and read from its file."""
        self.send({"kind": "view", "spec": str(spec)})
        answer = self.conn.recv()
        if isinstance(answer, DDBenchError):
            raise answer
        return read_view(answer, device)

    def warning(self, text: str) -> None:
        """A one-line warning for the harness to show (a checkpoint ignored)."""
        self.send({"kind": "warning", "text": str(text)})

    def progress(self, step: int, total: int | None, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S or (total is not None and step >= total):
            self.last = now
            self.send({"kind": "progress", "step": int(step), "total": None if total is None else int(total), "metrics": metrics})


def exit_with_parent() -> None:
    """On Linux, ask the kernel to kill this process when its parent (the fork server, which exits
    with the harness) dies, so that a killed harness leaves no distiller or cell host running."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _child(request: DistillRequest, conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the harness's to handle: it stops this child
    warnings.showwarning = show_warning  # a plugin's DDBenchWarning (a cache it ignores, say): one line on stderr
    exit_with_parent()
    channel = _Channel(conn)
    try:
        header, data = _run(request, channel)
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt from a plugin fail the cell too
        header, data = {"status": "failed", "error": one_line(exc), "traceback": traceback.format_exc(),
                        "resumed_from": 0 if channel.context is None else channel.context.resumed_from}, None
    channel.send({"kind": "result", **header})
    if data is not None:
        conn.send_bytes(data)
    conn.close()


def _run(request: DistillRequest, channel: _Channel) -> tuple[dict[str, Any], bytes | None]:
    from ddbench.plugins import instantiate

    torch.set_num_threads(request.threads)
    device = torch.device(request.device)
    view = read_view(request.view, device)
    distiller = instantiate(request.distiller, request.distiller_options, request.profile)
    learner = instantiate(request.learner, request.learner_options, request.profile)
    reason = mapped_reason(distiller, view) or distiller.supports(view, learner)
    if reason is not None:
        return {"status": "skipped", "error": str(reason)}, None
    generator = torch.Generator(device).manual_seed(request.seed)
    store = request.checkpoint
    if store is not None:
        store.warn = channel.warning
    context = RunContext(device, request.seed, generator, Progress(channel.progress), request.profile,
                         request.time_limit_s, Path(request.cache_dir), open_view=lambda spec: channel.view(spec, device),
                         checkpoints=store)
    channel.context = context
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    channel.send({"kind": "started"})
    context.started = time.perf_counter()
    try:
        artifact = distiller.distill(view, request.budget, learner, context)  # None reaches budget_exempt ones only
    except NotApplicable as exc:
        return {"status": "skipped", "error": str(exc), "resumed_from": context.resumed_from}, None
    cuda_peak = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        cuda_peak = torch.cuda.max_memory_allocated(device) / 2**20
    channel.send({"kind": "finished", "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "cuda_peak_mb": cuda_peak})
    check_boundary(artifact, distiller.name)
    try:
        recipe = json.loads(json.dumps(artifact.recipe))
    except (TypeError, ValueError) as exc:
        raise DDBenchError(f"the recipe of {distiller.name!r}'s artifact holds a value that is not plain JSON ({exc}): "
                           "declare plain values, and store data as tensors.") from None
    meta = json.loads(json.dumps(artifact.meta, default=_plain))
    label_bytes = sum(t.numel() * t.element_size() for k, t in artifact.tensors.items()
                      if k.startswith(labels.LABEL_PREFIXES))
    return ({"status": "ok", "recipe": recipe, "meta": meta, "label_bytes": label_bytes, "resumed_from": context.resumed_from},
            to_bytes(artifact.tensors))


def mapped_reason(distiller: Distiller, view: TaskView) -> str | None:
    """Why ``distiller`` skips ``view``: its train split is memory-mapped and the method does not read
    it through the accessor (:attr:`~ddbench.contracts.interfaces.Distiller.reads_mapped`); else ``None``."""
    if view.train.mapped and not distiller.reads_mapped:
        return (f"needs the whole train split as one tensor; task {view.name!r} is memory-mapped ({len(view.train)} images), "
                "read a batch at a time (Distiller.reads_mapped)")
    return None


def _plain(value: Any) -> Any:
    """A JSON stand-in for a meta value: small tensors and arrays as lists, anything else as text."""
    if hasattr(value, "tolist") and getattr(value, "size", None) is not None:
        size = value.numel() if isinstance(value, Tensor) else int(value.size)
        if size <= 100_000:
            return value.tolist()
    return repr(value)[:1000]
