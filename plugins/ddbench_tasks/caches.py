"""The decoded cache beside a dataset: its images decoded once into uint8 arrays.

A dataset folder ``D`` gets ``D/.ddbench-cache/<task>-<key>/`` holding, per split, ``<split>.x.npy``
(uint8 (N, C, H, W)) and ``<split>.y.npy`` (int64 (N,)), and ``info.json``, written last: a folder
without it is unfinished and is built again. ``key`` hashes what decides the decoded values: the
format version, the task and its decoding options (the resolution), and the size and modification
time of the source files (for image folders, of the class folders, whose times change when a file
in them is added, removed or renamed). Image files are decoded one at a time straight into a
memory-mapped ``.npy`` file with a progress bar, so building the cache of ImageNet-1K holds one
image in memory, not the dataset. Loading reads the arrays into memory (``np.load``) or maps them
(:class:`~ddbench.contracts.interfaces.MappedSplit`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ddbench.errors import TaskDataError
from ddbench_tasks.formats import decode

CACHE_DIR = ".ddbench-cache"
FORMAT = 1  # bump when the decoded values of any reader change


@dataclass(frozen=True)
class Files:
    """Image files of one split, their labels, and the side they are decoded to."""

    paths: list[Path]
    labels: np.ndarray
    size: int


Part = tuple[np.ndarray, np.ndarray] | Files  # decoded arrays (images, labels), or files to decode


def stats(paths: Iterable[Path]) -> list[list[Any]]:
    """Name, size and modification time of each path: what the cache key covers of the sources."""
    out = []
    for path in paths:
        st = path.stat()
        out.append([str(path), st.st_size, st.st_mtime_ns])
    return out


def cached(folder: Path, task: str, key: dict[str, Any], parts: Callable[[], dict[str, Part]]) -> Path:
    """The cache folder of ``task`` beside the data in ``folder`` for ``key``, built from ``parts()``
    (split name -> arrays or files) when it is absent."""
    digest = hashlib.sha256(json.dumps({"format": FORMAT, "task": task, **key}, sort_keys=True).encode()).hexdigest()[:16]
    target = folder / CACHE_DIR / f"{task}-{digest}"
    if (target / "info.json").is_file():
        return target
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TaskDataError(f"cannot write the decoded cache of {task!r} beside its data in {folder} ({exc.strerror}): "
                            "make that folder writable.") from None
    start = time.perf_counter()
    counts = {}
    try:
        for name, part in parts().items():
            counts[name] = _write(tmp, name, part, task)
        info = {"task": task, "key": key, "splits": counts, "build_s": round(time.perf_counter() - start, 2)}
        (tmp / "info.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        if target.exists():  # a concurrent build finished first, or an unfinished folder: replace it
            shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write(folder: Path, name: str, part: Part, task: str) -> int:
    """Write one split's arrays; image files are decoded into a memory-mapped file, one at a time."""
    if not isinstance(part, Files):
        images, labels = part
        np.save(folder / f"{name}.x.npy", np.ascontiguousarray(images, dtype=np.uint8))
        np.save(folder / f"{name}.y.npy", np.asarray(labels, dtype=np.int64))
        return len(labels)
    from tqdm import tqdm

    out = np.lib.format.open_memmap(folder / f"{name}.x.npy", mode="w+", dtype=np.uint8, shape=(len(part.paths), 3, part.size, part.size))
    bar = tqdm(part.paths, desc=f"{task}: decoding {name} once into {folder.parent}", unit="img", file=sys.stderr,
               dynamic_ncols=True, leave=False, mininterval=1.0)
    for i, path in enumerate(bar):
        out[i] = decode(path, part.size)
    out.flush()
    del out
    np.save(folder / f"{name}.y.npy", np.asarray(part.labels, dtype=np.int64))
    return len(part.labels)


def load(cache: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One split's images and labels, read into memory."""
    return np.load(cache / f"{name}.x.npy"), np.load(cache / f"{name}.y.npy")
