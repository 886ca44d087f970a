"""Readers of the datasets' own distribution files, each problem a one-line :class:`TaskDataError`.

- IDX (MNIST, Fashion-MNIST): a big-endian magic number (2051 images, 2049 labels), the sizes,
  then the uint8 values; gzipped (``.gz``) or not.
- CIFAR-10/100, python version: pickled dicts (protocol 2, written by Python 2) read through
  :class:`CifarUnpickler`, which admits only the globals that numpy arrays need.
- SVHN cropped digits: MATLAB ``.mat`` files with ``X`` (32, 32, 3, N) and ``y`` (N, 1), label 10
  meaning the digit 0.
- Image files (JPEG, PNG): decoded with Pillow to RGB, the shorter side resized to the target
  (bilinear, antialiased), then centre-cropped square (:func:`decode`).

Every reader returns uint8 images (N, C, H, W) and int64 labels (N,).
"""
from __future__ import annotations

import gzip
import io
import math
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ddbench.errors import TaskDataError

IDX_IMAGES, IDX_LABELS = 2051, 2049  # 0x00000803 (uint8, 3 dims) and 0x00000801 (uint8, 1 dim)

_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's array reconstruction function, wherever this numpy keeps it
CIFAR_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # the name the Python 2 files carry
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # the name numpy 2 writes
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
"""The only globals a CIFAR python-version file may name: what rebuilds its numpy arrays."""


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when its name ends in ``.gz``; a truncated archive is a one-line error."""
    data = path.read_bytes()
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as exc:
        raise TaskDataError(f"{path} is a damaged or truncated gzip file ({exc}): fetch it again (--download) or replace it.") from None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of an IDX file whose magic number must be ``magic`` (2051 images, 2049 labels)."""
    data = read_bytes(path)
    what = "images" if magic == IDX_IMAGES else "labels"
    if len(data) < 4:
        raise TaskDataError(f"{path} is truncated ({len(data)} bytes, no IDX header): fetch it again (--download) or replace it.")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise TaskDataError(f"{path} has magic number {found}, not {magic} (IDX {what}): it is not an MNIST-format {what} file; "
                            "fetch it again (--download) or replace it.")
    dims = magic & 0xFF
    header = 4 + 4 * dims
    if len(data) < header:
        raise TaskDataError(f"{path} is truncated ({len(data)} bytes, inside the IDX header): fetch it again (--download).")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    need = math.prod(shape)
    if len(data) - header != need:
        raise TaskDataError(f"{path} holds {len(data) - header} bytes of {what} where its header {shape} says {need}: "
                            "the file is truncated or damaged; fetch it again (--download).")
    return np.frombuffer(data, np.uint8, need, header).reshape(shape)


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and nothing else: any other global is refused."""

    def __init__(self, file: io.BufferedIOBase, path: Path):
        super().__init__(file, encoding="latin1")  # the files' strings are Python 2 str; latin1 maps their bytes 1:1
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in CIFAR_GLOBALS:
            return CIFAR_GLOBALS[(module, name)]
        raise TaskDataError(f"{self.path} asks for the global {module}.{name}, which CIFAR's python files never hold: refused "
                            "(pickles can run code); fetch the dataset again from its official archive (--download).")


def read_cifar(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) and labels of one CIFAR python-version file (``data_batch_1``, ``test``...);
    ``label_key`` is ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100)."""
    if not path.is_file():
        raise TaskDataError(f"{path} is missing: put the dataset's python-version folder there, or pass --download.")
    try:
        with path.open("rb") as f:
            batch = CifarUnpickler(f, path).load()
    except TaskDataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise TaskDataError(f"{path} is not a readable CIFAR python-version file ({type(exc).__name__}: {exc}): it is "
                            "truncated or damaged; fetch it again (--download).") from None
    if not isinstance(batch, dict):
        raise TaskDataError(f"{path} holds a {type(batch).__name__}, not CIFAR's dict: fetch the python version again (--download).")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise TaskDataError(f"{path} has no {'data' if 'data' not in batch else label_key!r} entry (keys: "
                            f"{', '.join(map(str, batch))}): it is not a CIFAR python-version {label_key} file.")
    data, labels = np.asarray(batch["data"]), np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise TaskDataError(f"{path}: data {data.dtype} {data.shape} with {len(labels)} labels, not uint8 (N, 3072) with N labels: "
                            "fetch the dataset again (--download).")
    return data.reshape(-1, 3, 32, 32), labels


def read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) and labels of an SVHN cropped-digits ``.mat`` file; label 10 is the digit 0."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), variable_names=["X", "y"])
    except (ValueError, TypeError, OSError, EOFError, NotImplementedError, KeyError) as exc:
        raise TaskDataError(f"{path} is not a readable MATLAB file ({type(exc).__name__}: {exc}): it is truncated or "
                            "damaged; fetch it again (--download).") from None
    if "X" not in mat or "y" not in mat:
        raise TaskDataError(f"{path} lacks the variable {'X' if 'X' not in mat else 'y'}: it is not an SVHN cropped-digits file.")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise TaskDataError(f"{path}: X {x.shape} and y {len(y)} labels, not X (32, 32, 3, N) with N labels: not SVHN's format.")
    labels = y.astype(np.int64) % 10  # SVHN labels the digit 0 as 10
    return np.ascontiguousarray(x.astype(np.uint8).transpose(3, 2, 0, 1)), labels


def decode(path: Path, size: int) -> np.ndarray:
    """One image file as uint8 (3, size, size): RGB, shorter side resized to ``size`` (bilinear,
    antialiased), centre crop."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            w, h = image.size
            scale = size / min(w, h)
            if (w, h) != (size, size):
                rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
                image = image.resize((rw, rh), Image.Resampling.BILINEAR)
                left, top = (rw - size) // 2, (rh - size) // 2
                image = image.crop((left, top, left + size, top + size))
            return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise TaskDataError(f"{path} is not a readable image ({exc}): the file is truncated or damaged; fetch the dataset "
                            "again or remove the file.") from None
