"""Reading ``.pt`` files without running code: ``torch.load(weights_only=True)``, with exactly the numpy
number globals admitted where a layout holds numpy numbers (docs/import.md)."""
from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Any

import torch

from ddbench.errors import SourceError


def numpy_globals() -> list[Any]:
    """The numpy globals a pickled numpy number needs, and nothing else: the scalar constructor
    (under numpy 2's name and numpy 1's), ``numpy.dtype`` and the numeric dtype classes it builds."""
    import numpy as np

    try:
        scalar = importlib.import_module("numpy._core.multiarray").scalar  # numpy 2
    except ImportError:
        scalar = importlib.import_module("numpy.core.multiarray").scalar  # numpy 1
    kinds = ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float16", "Float32", "Float64")
    classes = [getattr(np.dtypes, f"{k}DType") for k in kinds] if hasattr(np, "dtypes") else []  # numpy >= 1.25
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype, *classes]


NUMPY_GLOBALS = ("numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "numpy.dtype")
"""The names :func:`numpy_globals` admits besides the dtype classes (``numpy.dtypes.<Kind>DType``)."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def safe_load(path: Path, numbers: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers; with ``numbers``, numpy
    numbers too (:func:`numpy_globals`). A file that pickles any other global is refused, naming it,
    before anything is unpickled."""
    import torch.serialization as serialization

    if not path.is_file():
        raise SourceError(f"{str(path)!r} is not a file: pass the file the source saved.")
    allowed = {name for g in numpy_globals() for name in ([g[1]] if isinstance(g, tuple) else [f"{g.__module__}.{g.__qualname__}"])}
    allowed |= set(NUMPY_GLOBALS)
    try:
        found = serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - not a zip checkpoint (a legacy .pt): torch.load's own restricted unpickler decides
        found = []
    other = [g for g in found if not (numbers and g in allowed)]
    if other:
        raise SourceError(f"refusing {path.name!r}: it pickles {other[0]}, which is not a tensor, a plain container"
                          f"{' or a numpy number' if numbers else ''}; nothing was unpickled (docs/import.md).")
    try:
        with serialization.safe_globals(numpy_globals() if numbers else []):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's restricted unpickler refused it, or the file is not a torch file
        reason = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if str(exc) else type(exc).__name__
        raise SourceError(f"refusing {path.name!r}: torch.load(weights_only=True) cannot read it ({reason[:200]}); "
                          "nothing else may unpickle it.") from exc
