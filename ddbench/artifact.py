"""Storage accounting and validation of artifacts, done by the harness, never by a plugin."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddbench.errors import ArtifactError, BudgetError
from ddbench.interfaces import Artifact, Budget, TaskView


@dataclass(frozen=True)
class Storage:
    """What an artifact stores: scalars and bytes in total, by dtype, and per tensor."""

    scalars: int
    bytes: int
    by_dtype: dict[str, int]
    by_tensor: dict[str, int]


def count_storage(artifact: Artifact) -> Storage:
    """Count every element of every tensor in the artifact (learned lr, decoders... included)."""
    by_dtype: dict[str, int] = {}
    by_tensor: dict[str, int] = {}
    total_bytes = 0
    for name, tensor in artifact.tensors.items():
        n = tensor.numel()
        by_tensor[name] = n
        key = str(tensor.dtype).removeprefix("torch.")
        by_dtype[key] = by_dtype.get(key, 0) + n * tensor.element_size()
        total_bytes += n * tensor.element_size()
    return Storage(sum(by_tensor.values()), total_bytes, by_dtype, by_tensor)


def validate(artifact: Artifact, task: TaskView, budget: Budget | None, distiller: str) -> Storage:
    """Check types, shapes, finiteness and the budget; return the storage count.

    ``budget`` is ``None`` for budget-exempt reference rows (the full train split).
    """
    if not isinstance(artifact, Artifact):
        raise ArtifactError(f"distiller {distiller!r} returned {type(artifact).__name__}, not an Artifact: return ddbench.Artifact(tensors={{...}}).")
    if not artifact.tensors:
        raise ArtifactError(f"distiller {distiller!r} returned an artifact with no tensors: store at least 'x' and 'y'.")
    for name, tensor in artifact.tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ArtifactError(f"artifact tensor {name!r} from {distiller!r} is a {type(tensor).__name__}, not a torch.Tensor: convert it.")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ArtifactError(f"artifact tensor {name!r} from {distiller!r} has NaN or infinite values: check the method's learning rate or loss.")
    if "x" in artifact.tensors:
        x = artifact.tensors["x"]
        if tuple(x.shape[1:]) != tuple(task.input_shape):
            raise ArtifactError(
                f"artifact 'x' from {distiller!r} has shape {tuple(x.shape)}, expected (N, {', '.join(map(str, task.input_shape))}) for task {task.name!r}."
            )
        y = artifact.tensors.get("y")
        if y is None and artifact.recipe.get("labels") == "class-balanced":
            if task.num_classes is None or len(x) % task.num_classes:
                raise ArtifactError(f"artifact from {distiller!r} declares class-balanced labels but has {len(x)} rows for {task.num_classes} classes: store 'y' instead.")
        elif y is None or len(y) != len(x):
            raise ArtifactError(f"artifact from {distiller!r} needs a 'y' with one target per row of 'x' (got {None if y is None else len(y)} for {len(x)}).")
    storage = count_storage(artifact)
    if budget is not None:
        limit = budget.scalars(task)
        if storage.scalars > limit:
            parts = ", ".join(f"{k}={v}" for k, v in storage.by_tensor.items())
            raise BudgetError(
                f"artifact from {distiller!r} stores {storage.scalars} scalars, over the budget {budget} = {limit} scalars ({parts}): store less."
            )
    return storage


def with_labels(artifact: Artifact, num_classes: int | None) -> Artifact:
    """The artifact with ``y`` derived when its recipe declares class-balanced labels."""
    if "y" in artifact.tensors or artifact.recipe.get("labels") != "class-balanced" or num_classes is None:
        return artifact
    x = artifact.tensors["x"]
    y = torch.arange(num_classes, device=x.device).repeat_interleave(len(x) // num_classes)
    return Artifact({**artifact.tensors, "y": y}, artifact.recipe, artifact.meta)


def compression(task: TaskView, storage: Storage) -> float:
    """Stored scalars of the full train split divided by the artifact's."""
    full = len(task.train) * (math.prod(task.input_shape) + 1)
    return full / max(storage.scalars, 1)


PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


def content_hash(artifact: Artifact) -> str:
    """SHA-256 over tensor names, dtypes, shapes and bytes (in name order)."""
    h = hashlib.sha256()
    for name in sorted(artifact.tensors):
        t = artifact.tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save(artifact: Artifact, path: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write ``path`` (.safetensors) and a JSON sidecar with the recipe, meta, ``info`` (task,
    distiller, budget, config, versions) and the content hash. Never pickle."""
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in artifact.tensors.items()}, str(path))
    sidecar = {"recipe": artifact.recipe, "meta": artifact.meta, "info": info or {}, "sha256": content_hash(artifact)}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=1, sort_keys=True, default=str) + "\n")
    return path


def load(path: str | Path) -> Artifact:
    """Read an artifact saved by :func:`save`; pickle-based files are refused, hashes checked."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise ArtifactError(f"refusing to load {path.name!r}: pickle files can run code when loaded; share artifacts as .safetensors + .json.")
    if not path.is_file():
        raise ArtifactError(f"artifact file {str(path)!r} not found.")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path.name!r} is not a safetensors file ({exc}): share artifacts as .safetensors + .json.") from exc
    sidecar_path = path.with_suffix(".json")
    sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.is_file() else {}
    artifact = Artifact(tensors, sidecar.get("recipe", {}), sidecar.get("meta", {}))
    if sidecar.get("sha256") and sidecar["sha256"] != content_hash(artifact):
        raise ArtifactError(f"{path.name!r} does not match the hash in its sidecar: the file was changed or corrupted.")
    return artifact
