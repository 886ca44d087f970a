"""Checkpoints: how a long distillation survives being killed (docs/write-a-distiller.md, "Checkpoints").

A distiller names the objects its loop changes in place (tensors, optimisers, modules, generators)
in :meth:`RunContext.checkpointer <ddbench.contracts.interfaces.RunContext.checkpointer>`, calls
:meth:`Checkpointer.restore` once before its loop and :meth:`Checkpointer.step` after every
iteration. The harness gives each distillation a :class:`CheckpointStore`, which writes a
checkpoint when the run's interval has passed; when the same cell runs again after a kill, restore()
puts the objects back as they were at that iteration, with every random generator (the named ones,
and torch's, numpy's and Python's global ones), so the run goes on to the very artifact an
uninterrupted run gives, bit for bit.

A checkpoint is data: one safetensors file whose tensors are the state's tensors and whose header
metadata holds the rest as JSON (the format, the distillation's key, the step and the structure,
tensors referred to by name). Nothing in it is unpickled. A file that cannot be read, of another
format version or of another distillation is ignored with a one-line warning: the cell starts
from zero.
"""
from __future__ import annotations

import copy
import json
import os
import random
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ddbench.errors import DDBenchError, DDBenchWarning, one_line

FORMAT = "ddbench-checkpoint/1"
"""The format a store writes and the only one it reads; another version is ignored with a warning."""
TAGS = frozenset({"__tensor__", "__generator__", "__tuple__", "__items__", "__ndarray__"})
"""The keys that mark a JSON object of the structure as an encoded value, not a plain dictionary."""


class CheckpointError(DDBenchError):
    """A checkpoint that cannot be used: unreadable, foreign, or not fitting the distiller's objects."""


class Resume(NamedTuple):
    """What :meth:`Checkpointer.restore` gives back: the step the checkpoint was taken at (0: none,
    start from the beginning) and the values passed to :meth:`Checkpointer.step` with it."""

    step: int
    values: dict[str, Any]


# --------------------------------------------------------------------------------------------
# The structure: JSON with tensors by name
# --------------------------------------------------------------------------------------------
def encode(value: Any, tensors: dict[str, Tensor], where: str = "state") -> Any:
    """``value`` as JSON, its tensors (and generator states) moved to CPU copies in ``tensors`` and
    referred to by name. Takes tensors, generators, None, bools, numbers, strings, lists, tuples,
    dictionaries and numpy arrays; anything else is a :class:`TypeError` naming ``where``."""
    if isinstance(value, Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": name, "device": value.device.type, "grad": value.requires_grad}
    if isinstance(value, torch.Generator):
        name = f"t{len(tensors)}"
        tensors[name] = value.get_state()
        return {"__generator__": name, "device": value.device.type}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not (k.startswith("__") and k.endswith("__")) for k in value):
            return {k: encode(v, tensors, f"{where}[{k!r}]") for k, v in value.items()}
        return {"__items__": [[encode(k, tensors, where), encode(v, tensors, f"{where}[{k!r}]")] for k, v in value.items()]}
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if np is not None and isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"checkpoint value {where} is a {type(value).__name__}: a checkpoint holds tensors, generators, numbers, "
                    "strings, None, lists, tuples, dictionaries and numpy arrays (and objects with state_dict())")


def decode(value: Any, tensors: dict[str, Tensor], device: torch.device) -> Any:
    """The inverse of :func:`encode`: tensors come back on ``device`` where they were on a device of
    its type, else on the CPU."""
    if isinstance(value, list):
        return [decode(v, tensors, device) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        tensor = tensors[value["__tensor__"]]
        tensor = tensor.to(device) if value["device"] == device.type and device.type != "cpu" else tensor
        return tensor.requires_grad_(True) if value["grad"] else tensor
    if "__generator__" in value:
        generator = torch.Generator(device if value["device"] == device.type else "cpu")
        generator.set_state(tensors[value["__generator__"]])
        return generator
    if "__tuple__" in value:
        return tuple(decode(v, tensors, device) for v in value["__tuple__"])
    if "__items__" in value:
        return {decode(k, tensors, device): decode(v, tensors, device) for k, v in value["__items__"]}
    if "__ndarray__" in value:
        import numpy as np

        return np.asarray(value["__ndarray__"], dtype=value["dtype"])
    return {k: decode(v, tensors, device) for k, v in value.items()}


# --------------------------------------------------------------------------------------------
# The objects a distiller names, and the global generators
# --------------------------------------------------------------------------------------------
def state_of(obj: Any, name: str) -> Any:
    """What a checkpoint keeps of a named object: a tensor or generator itself, else its
    ``state_dict()`` (optimisers, modules, schedulers), numpy generator state or ``getstate()``."""
    if isinstance(obj, (Tensor, torch.Generator)):
        return obj
    if hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict"):
        return obj.state_dict()
    if hasattr(obj, "bit_generator"):  # numpy.random.Generator
        return obj.bit_generator.state
    if hasattr(obj, "get_state") and hasattr(obj, "set_state"):  # numpy.random.RandomState
        return obj.get_state(legacy=False)
    if hasattr(obj, "getstate") and hasattr(obj, "setstate"):  # random.Random
        return obj.getstate()
    raise TypeError(f"checkpointed object {name!r} is a {type(obj).__name__}: name tensors, generators, optimisers, modules "
                    "or other objects with state_dict() and load_state_dict(); pass plain values to step() instead")


def load_into(obj: Any, state: Any, name: str) -> None:
    """Put ``state`` (as :func:`state_of` took it, decoded) back into ``obj``."""
    if isinstance(obj, Tensor):
        if not isinstance(state, Tensor) or state.shape != obj.shape or state.dtype != obj.dtype:
            got = f"{tuple(state.shape)} {state.dtype}" if isinstance(state, Tensor) else type(state).__name__
            raise CheckpointError(f"it holds {name!r} as {got}, where the distiller's is {tuple(obj.shape)} {obj.dtype}")
        with torch.no_grad():
            obj.copy_(state)
    elif isinstance(obj, torch.Generator):
        if not isinstance(state, torch.Generator):
            raise CheckpointError(f"it holds {name!r} as a {type(state).__name__}, where the distiller's is a generator")
        obj.set_state(state.get_state())
    elif hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict"):
        obj.load_state_dict(state)
    elif hasattr(obj, "bit_generator"):
        obj.bit_generator.state = state
    elif hasattr(obj, "get_state") and hasattr(obj, "set_state"):
        obj.set_state(state)
    else:
        obj.setstate(state)


def fits(obj: Any, state: Any, name: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` loads into ``obj``, leaving ``obj`` as it is
    (a trial on a copy), so that a checkpoint that does not fit changes nothing."""
    if isinstance(obj, torch.Generator):
        trial: Any = torch.Generator(obj.device)
    elif isinstance(obj, Tensor):
        trial = torch.empty_like(obj)
    else:
        trial = copy.deepcopy(obj)
    try:
        load_into(trial, state, name)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever load_state_dict raises, the checkpoint does not fit
        raise CheckpointError(f"its {name!r} does not load ({one_line(exc)})") from None


def global_rng() -> dict[str, Any]:
    """torch's CPU (and, once initialised, CUDA) generators, numpy's if it is imported, Python's."""
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    np = sys.modules.get("numpy")
    if np is not None:
        states["numpy"] = np.random.get_state(legacy=False)
    return states


def set_global_rng(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"][: torch.cuda.device_count()])
    if "numpy" in states:
        import numpy as np

        np.random.set_state(states["numpy"])


# --------------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------------
class Saved(NamedTuple):
    """A checkpoint as read: its step, the decoded states of the named objects, the values, the global generators."""

    step: int
    objects: dict[str, Any]
    values: dict[str, Any]
    global_rng: dict[str, Any]


def _warn(text: str) -> None:
    warnings.warn(DDBenchWarning(text), stacklevel=3)


class CheckpointStore:
    """Where one distillation keeps its checkpoint: the file ``path``, written atomically (a
    temporary file renamed over it), read back only when it is of this :data:`FORMAT` and of this
    distillation (``key``). ``every_s``: seconds between checkpoints (0: at every step a distiller
    offers). ``warn`` receives the one line that says why a checkpoint was ignored (default: a
    :class:`~ddbench.errors.DDBenchWarning`)."""

    def __init__(self, path: Path | str, key: str, every_s: float = 300.0, warn: Callable[[str], None] | None = None):
        if not every_s >= 0:
            raise ValueError(f"every_s must be a number of seconds >= 0 (got {every_s!r})")
        self.path, self.key, self.every_s = Path(path), str(key), float(every_s)
        self.warn = warn or _warn

    def write(self, step: int, objects: dict[str, Any], values: dict[str, Any]) -> None:
        """Write the checkpoint of ``step``: the named objects' states, the values and the global generators."""
        from safetensors.torch import save

        tensors: dict[str, Tensor] = {}
        structure = {"step": int(step), "objects": encode(objects, tensors, "objects"), "values": encode(values, tensors, "values"),
                     "global_rng": encode(global_rng(), tensors, "global_rng")}
        data = save(tensors, metadata={"format": FORMAT, "key": self.key, "state": json.dumps(structure)})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)

    def read(self, device: torch.device) -> Saved | None:
        """The checkpoint, its tensors on ``device`` where they were on such a device; ``None`` when
        there is none or it is unusable (which :attr:`warn` is told, in one line)."""
        if not self.path.is_file():
            return None
        try:
            return self._read(device)
        except CheckpointError as exc:
            self.ignore(str(exc))
        except Exception as exc:  # noqa: BLE001 - a damaged file in any way is ignored, never trusted
            self.ignore(f"it cannot be read ({one_line(exc)})")
        return None

    def ignore(self, why: str) -> None:
        self.warn(f"ignoring the checkpoint {self.path}: {why}; the distillation starts from the beginning.")

    def _read(self, device: torch.device) -> Saved:
        from safetensors.torch import load

        data = self.path.read_bytes()
        size = int.from_bytes(data[:8], "little")
        if len(data) < 8 or not 0 < size <= len(data) - 8:
            raise CheckpointError("it is truncated or not a safetensors file")
        metadata = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        if metadata.get("format") != FORMAT:
            raise CheckpointError(f"its format is {metadata.get('format')!r}, not {FORMAT!r}")
        if metadata.get("key") != self.key:
            raise CheckpointError(f"it belongs to another distillation (key {metadata.get('key')!r}, not {self.key!r})")
        tensors = load(data)
        structure = json.loads(metadata["state"])
        step = structure["step"]
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise CheckpointError(f"its step {step!r} is not a count of iterations")
        objects, values = decode(structure["objects"], tensors, device), decode(structure["values"], tensors, device)
        if not isinstance(objects, dict) or not isinstance(values, dict):
            raise CheckpointError("its objects and values are not tables")
        return Saved(step, objects, values, decode(structure["global_rng"], tensors, torch.device("cpu")))

    def delete(self) -> None:
        """Remove the checkpoint, and any temporary file a write killed halfway left beside it."""
        self.path.unlink(missing_ok=True)
        for temporary in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            temporary.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# What a distiller holds
# --------------------------------------------------------------------------------------------
class Checkpointer:
    """A distillation's checkpoints, as :meth:`RunContext.checkpointer
    <ddbench.contracts.interfaces.RunContext.checkpointer>` hands them out.

    ``objects``: what the loop changes in place, by name (tensors, generators (``torch.Generator``),
    optimisers, modules, anything with ``state_dict()``/``load_state_dict()``, numpy and Python
    generators); :meth:`track` names more later (the objects of a stage built inside the loop).
    ``every``: also save every that many steps, beside the run's interval. With no store (a
    context built outside the harness), :meth:`restore` finds nothing and nothing is saved.
    """

    def __init__(self, store: CheckpointStore | None, device: torch.device, every: int | None = None,
                 on_restore: Callable[[int], None] | None = None, **objects: Any):
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"every must be a positive number of steps or None (got {every!r})")
        self.store, self.device, self.every, self.on_restore = store, device, every, on_restore
        self.objects: dict[str, Any] = {}
        self.pending: dict[str, Any] = {}  # restored states of objects not tracked yet
        self.last = time.monotonic()
        self.track(**objects)

    def track(self, **objects: Any) -> None:
        """Name more objects (or new ones under earlier names). When a checkpoint was restored and
        holds a state under that name, it is loaded into the object now."""
        for name, obj in objects.items():
            state_of(obj, name)  # an object a checkpoint cannot hold is an error now, not at the first save
            if name in self.pending:
                try:
                    fits(obj, self.pending[name], name)
                except CheckpointError as exc:
                    assert self.store is not None  # pending states come from a store
                    self.store.delete()
                    raise CheckpointError(f"the checkpoint {self.store.path} does not fit the distillation ({exc}), so it "
                                          "was deleted: run the cell again to start it from the beginning.") from None
                load_into(obj, self.pending.pop(name), name)
            self.objects[name] = obj

    def restore(self) -> Resume:
        """Load the last checkpoint into the named objects and the global generators; ``(0, {})``
        when there is none (or it is unusable: then a one-line warning). Call it once, after
        building the objects and before the loop."""
        saved = None if self.store is None else self.store.read(self.device)
        if saved is None:
            return Resume(0, {})
        assert self.store is not None
        missing = sorted(set(self.objects) - set(saved.objects))
        try:
            if missing:
                raise CheckpointError(f"it holds no {', '.join(map(repr, missing))}")
            for name, obj in self.objects.items():
                fits(obj, saved.objects[name], name)
        except CheckpointError as exc:
            self.store.ignore(str(exc))
            return Resume(0, {})
        for name, obj in self.objects.items():
            load_into(obj, saved.objects[name], name)
        self.pending = {k: v for k, v in saved.objects.items() if k not in self.objects}
        set_global_rng(saved.global_rng)
        self.last = time.monotonic()
        if self.on_restore is not None:
            self.on_restore(saved.step)
        return Resume(saved.step, saved.values)

    def step(self, step: int, **values: Any) -> bool:
        """Offer a checkpoint after ``step`` (the iterations done); it is written when due (the
        run's interval has passed since the last one, or ``step`` is a multiple of ``every``).
        ``values``: what else the loop needs to go on (a loss history, a counter), given back by
        :meth:`restore`. Returns whether it saved."""
        if self.store is None:
            return False
        due = (self.every is not None and step % self.every == 0) or time.monotonic() - self.last >= self.store.every_s
        if due:
            self.save(step, **values)
        return due

    def save(self, step: int, **values: Any) -> None:
        """Write a checkpoint of ``step`` now (nothing without a store)."""
        if self.store is None:
            return
        self.store.write(step, {name: state_of(obj, name) for name, obj in self.objects.items()}, values)
        self.last = time.monotonic()
