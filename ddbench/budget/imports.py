"""Distilled sets saved by other code, read into ddbench artifacts (``ddbench import``, docs/import.md).

A source is the file layout an official repository writes (a ``.pt`` tensor file or pair, a
DatasetCondensation ``res_*.pt``, a folder of JPEGs, SRe2L's FKD soft-label files), Hugging Face
parquet shards, or a generic ``.npz`` or safetensors file. None of them says in which value space
its pixels are, with which statistics, what kind its labels are, whether it was selected on the
test split, and so on: the user states it, a :class:`Preset` filling what the source's code does.
The artifact's manifest (sidecar ``info`` and ``meta``) records every such fact beside the sha256
of each file read.

Nothing read here runs code: ``.pt`` files go through ``torch.load(weights_only=True)``, which
unpickles tensors and plain containers only, with exactly the numpy scalar globals of
:data:`NUMPY_GLOBALS` admitted where a layout holds numpy numbers (DC's accuracies, FKD's mix
parameters) and checked before anything is unpickled; ``.npz`` files are read without pickle.
Every refusal is a :class:`~ddbench.errors.SourceError` of one line, raised before anything is written.
"""
from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddbench.budget import labels
from ddbench.budget.artifact import problems
from ddbench.budget.fkd import read_fkd
from ddbench.budget.safeload import safe_load, sha256
from ddbench.contracts.interfaces import Artifact, Split, TaskView
from ddbench.errors import SourceError
from ddbench.plugins import Registry

SPACES = ("pixels", "normalised", "zca")
"""Value spaces of images: ``pixels`` in [0, 1]; ``normalised``, (pixel - mean) / std per channel;
``zca``, whitened by a ZCA map the source fitted (it cannot be converted without that map)."""
LABEL_KINDS = ("hard", "probabilities", "logits", "teacher")
"""Hard int64 classes; soft labels as probabilities (TESLA) or logits softened at a temperature
(DATM: softmax(logits / T), T = 1); or none stored, a teacher labelling online (SRe2L, RDED)."""
LAYOUTS = ("pt", "dc", "folder", "parquet", "npz", "safetensors")
PIXELS_SLACK = 0.05  # values of pixel-space data may pass [0, 1] by this much (resampling, JPEG ringing)
OUTSIDE_SHARE = 0.01  # data whose share of values outside that band passes this are not pixels

Stats = tuple[tuple[float, ...], tuple[float, ...]]
CIFAR10_STATS: Stats = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
MTT_STATS: dict[str, Stats] = {"cifar10": CIFAR10_STATS, "cifar100": CIFAR10_STATS, "tiny": IMAGENET_STATS, "imagenet": IMAGENET_STATS}
"""mtt-distillation ``utils.py`` ``get_dataset`` (TESLA's and DATM's copies say the same): CIFAR-100
normalised with CIFAR-10's statistics; Tiny ImageNet and the ImageNet subsets with ImageNet's."""
DC_STATS: dict[str, Stats] = {"mnist": ((0.1307,), (0.3081,)), "fashion-mnist": ((0.2861,), (0.3530,)),
                              "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)), "cifar10": CIFAR10_STATS,
                              "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762))}
"""DatasetCondensation ``utils.py`` ``get_dataset``: CIFAR-100 with its own statistics, unlike MTT."""


@dataclass(frozen=True)
class Preset:
    """What a source's code writes and does, filled in for the user (each may be overridden).

    ``layout``: how the files are read; ``space`` and ``stats`` (by dataset): the value space of its
    images; ``labels`` and ``temperature``: the kind of its labels; ``recipe``: what its evaluation
    declares that ddbench's recipe expresses; ``folder``: the class folder and file name patterns of
    an image folder (one group each: the class id); ``mosaic``: crops per image side; ``lr``: the
    learned-lr file beside the images; ``best_on_test``: its ``*_best`` files were kept for their
    test accuracy; ``code``: the repository, commit and files read to fill this in."""

    name: str
    layout: str
    code: str
    space: str | None = None
    stats: Mapping[str, Stats] = field(default_factory=dict)
    labels: str = "hard"
    temperature: float = 1.0
    recipe: Mapping[str, Any] = field(default_factory=dict)
    folder: tuple[str, str] | None = None
    mosaic: int = 1
    lr: str | None = None
    best_on_test: bool = False


MTT_CODE = "GeorgeCazenavette/mtt-distillation @ 50dccea (distill.py, utils.py)"
DC_CODE = "VICO-UoE/DatasetCondensation @ 53f63a6 (main.py, main_DM.py, utils.py)"
SRE2L_CODE = "VILA-Lab/SRe2L @ 8d00cba (SRe2L/recover/data_synthesis.py, SRe2L/relabel/generate_soft_label.py, utils_fkd.py)"
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("mtt", "pt", MTT_CODE, None, MTT_STATS, recipe={"augment": "dsa"}, best_on_test=True),
    Preset("tesla", "pt", "justincui03/tesla @ 488842e (distill.py, utils.py)", None, MTT_STATS, recipe={"augment": "dsa"},
           best_on_test=True),
    Preset("datm", "pt", "NUS-HPC-AI-Lab/DATM @ 97ae510 (distill/DATM.py, distill/evaluation.py, configs/)", "zca", MTT_STATS,
           labels="logits", recipe={"augment": "dsa"}, lr="lr_best.pt", best_on_test=True),
    Preset("dc", "dc", DC_CODE, "normalised", DC_STATS),
    Preset("dsa", "dc", DC_CODE, "normalised", DC_STATS, recipe={"augment": "dsa"}),
    Preset("dm", "dc", DC_CODE, "normalised", DC_STATS, recipe={"augment": "dsa"}),
    Preset("sre2l", "folder", SRE2L_CODE, "pixels", labels="teacher", folder=(r"new(\d{3})", r"class(\d{3})_id(\d{3})\.jpg")),
    Preset("cda", "folder", "VILA-Lab/SRe2L @ 8d00cba (CDA/recover_cda_in1k.py, CDA/recover_cda_tiny.py)", "pixels", labels="teacher",
           folder=(r"new(\d{3})", r"class(\d{3})_id(\d{3})\.jpg")),
    Preset("rded", "folder", "LINs-lab/RDED @ 3f6453d (synthesize/main.py, synthesize/utils.py, scripts/)", "pixels", labels="teacher",
           folder=(r"(\d{5})", r"class(\d{5})_id(\d{5})\.jpg"), mosaic=2),
    Preset("parquet", "parquet", "Hugging Face hub parquet shards: encoded images and class ids", "pixels"),
    Preset("npz", "npz", "a numpy .npz of arrays x (or images) and y (or labels)"),
    Preset("safetensors", "safetensors", "a safetensors file of tensors x (or images) and y (or labels)"),
    Preset("pt", "pt", "a torch .pt tensor (or a pair: images and labels)"),
    Preset("folder", "folder", "a folder of class folders of images, each folder named by its class id", "pixels",
           folder=(r"\D*(\d+)", r".*\.(?:jpe?g|png)")),
)}


def _tensor(value: Any, what: str) -> Tensor:
    if not isinstance(value, Tensor) or type(value) not in (Tensor, torch.nn.Parameter):
        raise SourceError(f"{what} holds a {type(value).__name__}, not a tensor: pass the file the source saved its tensor in.")
    return value.detach().clone()


# -- the layouts -------------------------------------------------------------------------------
@dataclass
class Read:
    """What a layout gave: images ``x``, labels ``y`` (``None``: none stored), a learned lr, the files
    read (name -> sha256) and facts of the layout (which experiment, which files)."""

    x: Tensor
    y: Tensor | None
    files: dict[str, str]
    lr: Tensor | None = None
    facts: dict[str, Any] = field(default_factory=dict)


def read_pt(source: Path, preset: Preset, labels_file: Path | None) -> Read:
    """An images file (``images_best.pt``) and its labels file (``labels_best.pt``, beside it by name),
    or a folder holding both; the preset's learned-lr file beside them when present."""
    images = source / "images_best.pt" if source.is_dir() else source
    if labels_file is None:
        labels_file = images.with_name(images.name.replace("images", "labels", 1)) if "images" in images.name else None
        if labels_file is not None and not labels_file.is_file():
            labels_file = None
    x = _tensor(safe_load(images), images.name)
    files = {images.name: sha256(images)}
    y = None
    if labels_file is not None:
        y = _tensor(safe_load(labels_file), labels_file.name)
        files[labels_file.name] = sha256(labels_file)
    lr = None
    lr_path = images.with_name(images.name.replace("images", "lr", 1)) if preset.lr and "images" in images.name else None
    if lr_path is not None and lr_path.is_file():
        lr = _tensor(safe_load(lr_path), lr_path.name)
        files[lr_path.name] = sha256(lr_path)
    return Read(x, y, files, lr, {"best_file": "_best" in images.name, "name": images.name})


def read_dc(source: Path, experiment: int | None) -> Read:
    """A DatasetCondensation ``res_<method>_<dataset>_<model>_<ipc>ipc.pt``: ``{'data': [[images,
    labels], ...one per experiment], 'accs_all_exps': {...}}``; ``experiment`` picks one."""
    saved = safe_load(source, numbers=True)
    if not isinstance(saved, dict) or not isinstance(saved.get("data"), list) or not saved["data"]:
        raise SourceError(f"{source.name!r} has no 'data' list of [images, labels] per experiment: it is not a "
                          "DatasetCondensation res_*.pt (main.py and main_DM.py save {'data': [...], 'accs_all_exps': {...}}).")
    runs = saved["data"]
    if experiment is None:
        if len(runs) > 1:
            raise SourceError(f"{source.name!r} holds {len(runs)} experiments: pick one with --experiment N (0..{len(runs) - 1}).")
        experiment = 0
    if not 0 <= experiment < len(runs):
        raise SourceError(f"--experiment {experiment} is out of range: {source.name!r} holds experiments 0..{len(runs) - 1}.")
    run = runs[experiment]
    if not isinstance(run, (list, tuple)) or len(run) != 2:
        raise SourceError(f"experiment {experiment} of {source.name!r} is not an [images, labels] pair.")
    return Read(_tensor(run[0], f"{source.name!r} experiment {experiment}"), _tensor(run[1], f"{source.name!r} experiment {experiment}"),
                {source.name: sha256(source)}, facts={"experiment": experiment, "experiments": len(runs)})


def _decode(data: bytes, where: str, channels: int) -> Tensor:
    """An encoded image as uint8 (C, H, W), in the task's channels (grey or RGB)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SourceError(f"{where} is not an image PIL can decode ({exc}).") from exc
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)


def read_folder(source: Path, preset: Preset, shape: tuple[int, ...], num_classes: int) -> Read:
    """Class folders of images (SRe2L ``new<ccc>/class<ccc>_id<iii>.jpg``, RDED ``<ccccc>/class<ccccc>_id<iiiii>.jpg``),
    read class-major in id order; 8-bit pixels / 255 (PIL's decoding)."""
    assert preset.folder is not None
    folder_re, file_re = (re.compile(p) for p in preset.folder)
    if not source.is_dir():
        raise SourceError(f"{str(source)!r} is not a folder: preset {preset.name!r} reads a folder of class folders.")
    classes: dict[int, Path] = {}
    for sub in sorted(p for p in source.iterdir() if p.is_dir()):
        match = folder_re.fullmatch(sub.name)
        if match is None:
            raise SourceError(f"folder {sub.name!r} in {source.name!r} is not a class folder of preset {preset.name!r} "
                              f"(pattern {preset.folder[0]}): remove it or pick the preset that wrote the folder.")
        classes[int(match.group(1))] = sub
    if sorted(classes) != list(range(num_classes)):
        found = sorted(classes)
        span = f"{len(found)} classes" + (f", {found[0]}..{found[-1]}" if found else "")
        raise SourceError(f"{source.name!r} holds {span}, but the task has classes 0..{num_classes - 1}: import into the task "
                          "the set was distilled on, or map the classes with --class-order.")
    images, targets, files = [], [], {}
    for c in sorted(classes):
        names = sorted((p for p in classes[c].iterdir() if p.is_file() and file_re.fullmatch(p.name)),
                       key=lambda p: tuple(int(g) for g in re.findall(r"\d+", p.name)))
        if not names:
            raise SourceError(f"class folder {classes[c].name!r} holds no image named as preset {preset.name!r} writes them "
                              f"({preset.folder[1]}).")
        for path in names:
            data = path.read_bytes()
            image = _decode(data, f"{classes[c].name}/{path.name}", shape[0])
            if tuple(image.shape) != tuple(shape):
                raise SourceError(f"{classes[c].name}/{path.name} is {tuple(image.shape)}, but the task takes {tuple(shape)}: "
                                  "import into the task of that size (ddbench does not resize).")
            images.append(image)
            targets.append(c)
            files[f"{classes[c].name}/{path.name}"] = hashlib.sha256(data).hexdigest()
    x = torch.stack(images).float() / 255.0
    return Read(x, torch.tensor(targets, dtype=torch.int64), files, facts={"eight_bit": True})


def read_parquet(source: Path, shape: tuple[int, ...], image_column: str, label_column: str) -> Read:
    """Parquet shards (one file, or every ``*.parquet`` of a folder in name order) of encoded images
    (a column of ``{'bytes': ...}`` or raw bytes) and class ids."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise SourceError("reading parquet needs pyarrow: pip install 'ddbench[import]'.") from exc
    shards = sorted(source.glob("*.parquet")) if source.is_dir() else [source]
    if not shards or not all(p.is_file() for p in shards):
        raise SourceError(f"{str(source)!r} is not a parquet file or a folder of *.parquet shards.")
    images, targets, files = [], [], {}
    for shard in shards:
        table = pq.read_table(str(shard))
        missing = [c for c in (image_column, label_column) if c not in table.column_names]
        if missing:
            raise SourceError(f"{shard.name!r} has no column {missing[0]!r} (it has {', '.join(table.column_names)}): "
                              "name them with --image-column and --label-column.")
        for i, (cell, label) in enumerate(zip(table.column(image_column).to_pylist(), table.column(label_column).to_pylist())):
            data = cell.get("bytes") if isinstance(cell, dict) else cell
            if not isinstance(data, bytes) or not isinstance(label, int):
                raise SourceError(f"row {i} of {shard.name!r} is not an encoded image with an integer class id.")
            image = _decode(data, f"row {i} of {shard.name!r}", shape[0])
            if tuple(image.shape) != tuple(shape):
                raise SourceError(f"row {i} of {shard.name!r} is {tuple(image.shape)}, but the task takes {tuple(shape)}.")
            images.append(image)
            targets.append(label)
        files[shard.name] = sha256(shard)
    return Read(torch.stack(images).float() / 255.0, torch.tensor(targets, dtype=torch.int64), files, facts={"eight_bit": True})


def _named(tensors: Mapping[str, Any], source: Path) -> tuple[Any, Any]:
    for x_key, y_key in (("x", "y"), ("images", "labels")):
        if x_key in tensors:
            return tensors[x_key], tensors.get(y_key)
    raise SourceError(f"{source.name!r} holds {', '.join(sorted(tensors)) or 'nothing'}: name the images 'x' (or 'images') "
                      "and the labels 'y' (or 'labels').")


def read_arrays(source: Path, layout: str) -> Read:
    """A ``.npz`` (read without pickle) or a safetensors file of ``x``/``y`` (or ``images``/``labels``)."""
    if not source.is_file():
        raise SourceError(f"{str(source)!r} is not a file.")
    if layout == "npz":
        import numpy as np

        try:
            with np.load(source, allow_pickle=False) as arrays:
                x, y = _named({k: arrays[k] for k in arrays.files}, source)
        except (ValueError, OSError) as exc:
            raise SourceError(f"{source.name!r} is not a .npz of plain arrays ({str(exc).splitlines()[0]}): object arrays "
                              "need pickle, which is never used.") from exc
        return Read(torch.from_numpy(x.copy()), None if y is None else torch.from_numpy(y.copy()), {source.name: sha256(source)})
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        x, y = _named(load_file(str(source)), source)
    except (SafetensorError, OSError) as exc:
        raise SourceError(f"{source.name!r} is not a safetensors file ({exc}).") from exc
    return Read(x, y, {source.name: sha256(source)})


# -- value spaces ------------------------------------------------------------------------------
def channel_stats(x: Tensor) -> dict[str, list[float]]:
    """Per-channel mean, std, min and max of (N, C, ...) images."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    return {"mean": flat.mean(1).tolist(), "std": flat.std(1, unbiased=False).tolist(), "min": flat.amin(1).tolist(),
            "max": flat.amax(1).tolist()}


def contradiction(x: Tensor, space: str) -> str | None:
    """Why the values of ``x`` cannot be in the declared ``space`` (``None``: they may be): pixels
    lie in [0, 1] give or take :data:`PIXELS_SLACK`; normalised or whitened images of real-like
    content have values below zero (wherever a pixel is darker than the mean), so a set wholly in
    [0, 1] is pixels whatever was declared: the classic cause of 10 % accuracy."""
    low, high = float(x.min()), float(x.max())
    if space == "pixels":
        outside = float(((x < -PIXELS_SLACK) | (x > 1 + PIXELS_SLACK)).float().mean())
        if outside > OUTSIDE_SHARE:
            return (f"{outside:.0%} of its values lie outside [0, 1] (min {low:.3g}, max {high:.3g}): they look normalised, "
                    "not pixels; declare --space normalised with the source's --mean and --std (or its preset)")
        return None
    if low >= 0 and high <= 1 + PIXELS_SLACK:
        return (f"every value lies in [0, 1] (min {low:.3g}, max {high:.3g}): they look like pixels, not {space} values; "
                "declare --space pixels")
    return None


def affine(source: Stats | None, target: Stats | None, channels: int) -> tuple[list[float], list[float]] | None:
    """Per-channel ``(scale, shift)`` taking values normalised by ``source`` (``None``: pixels) to
    values normalised by ``target`` (``None``: pixels); ``None`` when the two are the same space."""
    def full(stats: Stats | None) -> Stats:
        if stats is None:
            return (0.0,) * channels, (1.0,) * channels
        mean, std = stats
        if len(mean) != channels or len(std) != channels or any(s <= 0 for s in std):
            raise SourceError(f"statistics {list(mean)} / {list(std)} do not fit {channels}-channel images "
                              "(one mean and one positive std per channel).")
        return tuple(mean), tuple(std)
    (m1, s1), (m2, s2) = full(source), full(target)
    if (m1, s1) == (m2, s2):
        return None
    return [a / b for a, b in zip(s1, s2)], [(a - b) / c for a, b, c in zip(m1, m2, s2)]


def convert(x: Tensor, scale: Sequence[float], shift: Sequence[float]) -> Tensor:
    """``x * scale + shift`` per channel, computed in float64 and stored in float32."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x.double() * torch.tensor(scale, dtype=torch.float64).view(shape)
            + torch.tensor(shift, dtype=torch.float64).view(shape)).float()


# -- labels ------------------------------------------------------------------------------------
def label_tensor(y: Tensor | None, kind: str, temperature: float, n: int, num_classes: int, where: str) -> Tensor | None:
    """The artifact's ``y`` from the source's labels of the stated ``kind``: int64 classes (hard),
    probabilities as they are, logits as softmax(logits / temperature); ``None`` for a teacher."""
    if kind == "teacher":
        return None if y is None or y.is_floating_point() else _hard(y, n, num_classes, where)
    if y is None:
        raise SourceError(f"{where} holds no labels: pass the labels file (--labels-file) or a layout that stores them.")
    if kind == "hard":
        if y.is_floating_point():
            fix = "declare --labels probabilities or logits" if y.dim() == 2 else "store them as int64 class indices"
            raise SourceError(f"{where}'s labels are float {tuple(y.shape)}, not hard int64 classes: {fix}.")
        return _hard(y, n, num_classes, where)
    if not y.is_floating_point() or tuple(y.shape) != (n, num_classes):
        raise SourceError(f"{where}'s labels are {str(y.dtype).removeprefix('torch.')} {tuple(y.shape)}, but --labels {kind} "
                          f"takes float ({n}, {num_classes}): declare --labels hard for class indices.")
    y = y.double()
    if kind == "probabilities":
        sums = y.sum(1)
        if bool((y < 0).any()) or float((sums - 1).abs().max()) > 1e-3:
            raise SourceError(f"{where}'s labels are not probabilities (rows sum to {float(sums.min()):.3g}..{float(sums.max()):.3g}"
                              f"{', with negative entries' if bool((y < 0).any()) else ''}): declare --labels logits.")
        return (y / sums[:, None]).float()
    if not temperature > 0 or not math.isfinite(temperature):
        raise SourceError(f"--temperature {temperature} is not a positive number.")
    return torch.softmax(y / temperature, 1).float()


def _hard(y: Tensor, n: int, num_classes: int, where: str) -> Tensor:
    if y.dim() != 1 or len(y) != n:
        raise SourceError(f"{where}'s labels have shape {tuple(y.shape)}, expected ({n},): one class per image.")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise SourceError(f"{where}'s labels run {int(y.min())}..{int(y.max())}, outside the task's classes 0..{num_classes - 1}.")
    return y.long()


def reorder(y: Tensor | None, order: Sequence[int] | None, num_classes: int) -> Tensor | None:
    """Labels with source class ``i`` renamed task class ``order[i]`` (hard labels mapped, soft label columns moved)."""
    if y is None or order is None:
        return y
    if sorted(order) != list(range(num_classes)):
        raise SourceError(f"--class-order must list each of the task's classes 0..{num_classes - 1} once (got {len(order)} entries).")
    mapping = torch.tensor(list(order), dtype=torch.int64)
    if not y.is_floating_point():
        return mapping[y]
    out = torch.empty_like(y)
    out[:, mapping] = y
    return out


# -- the request and the import ----------------------------------------------------------------
@dataclass
class Request:
    """What ``ddbench import`` was told: the source, its preset, the task (its view holds no data)
    and every fact the user stated (``None``: the preset's)."""

    source: Path
    preset: Preset
    view: TaskView
    task_spec: str
    dataset: str
    space: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    labels: str | None = None
    temperature: float | None = None
    labels_file: Path | None = None
    lr: float | None = None
    lr_file: Path | None = None
    class_order: list[int] | None = None
    experiment: int | None = None
    test_selected: bool | None = None
    mosaic: int | None = None
    teacher: str | None = None
    teacher_weights: Path | None = None
    soft_labels: Path | None = None
    fkd_seed: int = 42
    recipe: dict[str, Any] = field(default_factory=dict)
    image_column: str = "image"
    label_column: str = "label"
    force: bool = False


def empty_view(name: str, num_classes: int | None, shape: tuple[int, ...], info: dict[str, Any],
               options: dict[str, Any]) -> TaskView:
    """A task's description without data: what an import checks shapes, classes and a teacher against."""
    empty = Split(torch.empty(0, *shape), torch.empty(0, dtype=torch.int64))
    return TaskView(name, "classification", num_classes, shape, empty, empty, info, options)


def read(request: Request) -> Read:
    """The source's tensors, read by the preset's layout."""
    p, view = request.preset, request.view
    assert view.num_classes is not None
    if p.layout == "pt":
        return read_pt(request.source, p, request.labels_file)
    if p.layout == "dc":
        return read_dc(request.source, request.experiment)
    if p.layout == "folder":
        return read_folder(request.source, p, view.input_shape, view.num_classes)
    if p.layout == "parquet":
        return read_parquet(request.source, view.input_shape, request.image_column, request.label_column)
    return read_arrays(request.source, p.layout)


def source_stats(request: Request, space: str) -> Stats | None:
    """The statistics the source normalised with: stated, else the preset's for the dataset."""
    if space != "normalised":
        return None
    if (request.mean is None) != (request.std is None):
        raise SourceError("--mean and --std go together: state both (one value per channel, comma-separated).")
    if request.mean is not None and request.std is not None:
        return request.mean, request.std
    if request.dataset in request.preset.stats:
        return request.preset.stats[request.dataset]
    known = ", ".join(sorted(request.preset.stats)) or "none"
    raise SourceError(f"preset {request.preset.name!r} has no normalisation statistics for dataset {request.dataset!r} "
                      f"(it has: {known}): state the source's --mean and --std, or --dataset.")


def task_stats(view: TaskView) -> Stats | None:
    """The task's space: its normalisation statistics (``None``: pixels, or whitened where ``info['zca']``)."""
    mean, std = view.info.get("mean") or (), view.info.get("std") or ()
    return (tuple(mean), tuple(std)) if mean else None


def import_set(request: Request, learners: Registry[Any]) -> tuple[Artifact, dict[str, Any]]:
    """The artifact of a source and its manifest; every problem a one-line :class:`SourceError`."""
    p, view = request.preset, request.view
    if len(view.input_shape) != 3 or view.num_classes is None:
        raise SourceError(f"task {view.name!r} is not an image classification task: imports read images with classes.")
    got = read(request)
    where = got.facts.get("name", request.source.name)
    x = got.x
    if not x.is_floating_point() and x.dtype != torch.uint8:
        raise SourceError(f"{where}'s images are {str(x.dtype).removeprefix('torch.')}: expected float images (or uint8 pixels).")
    if x.dtype == torch.uint8:
        x, got.facts["eight_bit"] = x.float() / 255.0, True
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(view.input_shape):
        raise SourceError(f"{where}'s images have shape {tuple(x.shape)}, but task {view.name!r} takes (N, "
                          f"{', '.join(map(str, view.input_shape))}): import into the task the set was distilled on.")
    space = request.space or p.space or ("normalised" if request.mean is not None else None)  # statistics imply a normalised set
    if space is None:
        raise SourceError(f"preset {p.name!r} cannot know the value space of {where}: state --space pixels, normalised "
                          "(with the source's statistics) or zca.")
    if not bool(torch.isfinite(x).all()):
        raise SourceError(f"{where}'s images hold NaN or infinite values.")
    why = contradiction(x, space)
    if why is not None and not request.force:
        raise SourceError(f"{where} is declared {space}, but {why} (or pass --force if you are sure).")
    stats = source_stats(request, space)
    zca_task = bool(view.info.get("zca"))
    if (space == "zca") != zca_task:
        raise SourceError(f"{where} is {space} and task {view.name!r} is {'whitened (zca=true)' if zca_task else 'not whitened'}: "
                          "a ZCA map is the source's own fit and cannot be converted exactly; import whitened files into "
                          "the task with zca=true and the others into the task without it (docs/import.md).")
    channels = x.shape[1]
    change = None if space == "zca" else affine(stats, task_stats(view), channels)
    converted = x.float() if change is None else convert(x, *change)
    kind = request.labels or p.labels
    if kind not in LABEL_KINDS:
        raise SourceError(f"--labels {kind!r} is not one of {', '.join(LABEL_KINDS)}.")
    temperature = request.temperature if request.temperature is not None else p.temperature
    y = reorder(label_tensor(got.y, kind, temperature, len(x), view.num_classes, where), request.class_order, view.num_classes)
    tensors: dict[str, Tensor] = {"x": converted.contiguous()}
    if y is not None:
        tensors["y"] = y
    recipe: dict[str, Any] = {**p.recipe, **request.recipe}
    lr_value, lr_from = _learned_lr(request, got)
    if lr_value is not None:
        tensors["lr"] = torch.tensor(lr_value, dtype=torch.float32)
        recipe["lr_from_artifact"] = "lr"
    teacher = _teacher(request, tensors, recipe, learners, kind)
    if request.soft_labels is not None:
        bank, fkd_facts = read_fkd(request.soft_labels, len(x), view.num_classes, request.fkd_seed)
        tensors.update(bank)
        got.files.update(fkd_facts.pop("files"))
        got.facts["fkd"] = fkd_facts
    if kind == "teacher" and teacher is None and request.soft_labels is None:
        raise SourceError(f"preset {p.name!r} labels online with a teacher: name it with --teacher SPEC --teacher-weights FILE "
                          "(it is stored and charged), give the FKD soft labels with --soft-labels DIR, or declare --labels hard.")
    artifact = Artifact(tensors, recipe)
    found = problems(artifact, view, None, f"import of {where}", learners=learners)
    if found:
        raise SourceError(found[0].message)
    selected, selected_from = _test_selected(request, got)
    target = task_stats(view)
    manifest = {
        "source": str(request.source), "preset": p.name, "layout": p.layout, "code": p.code, "files": got.files,
        "task": request.task_spec, "dataset": request.dataset,
        "space": {"declared": space, "mean": None if stats is None else list(stats[0]), "std": None if stats is None else list(stats[1]),
                  "zca": space == "zca", "eight_bit": bool(got.facts.get("eight_bit")), "statistics": channel_stats(x),
                  "forced": why is not None},
        "converted": None if change is None else {"to": {"mean": None if target is None else list(target[0]),
                                                         "std": None if target is None else list(target[1])},
                                                  "scale": change[0], "shift": change[1]},
        "labels": {"kind": kind, "temperature": temperature if kind == "logits" else None, "stored": "y" in tensors,
                   "soft_labels": got.facts.get("fkd")},
        "class_order": request.class_order or list(range(view.num_classes)),
        "lr": {"value": lr_value, "from": lr_from},
        "mosaic": request.mosaic or p.mosaic,
        "test_selected": selected, "test_selected_from": selected_from,
        "experiment": got.facts.get("experiment"), "teacher": teacher,
    }
    return Artifact(tensors, recipe, {"import": manifest}), manifest


def _learned_lr(request: Request, got: Read) -> tuple[float | None, str | None]:
    if request.lr is not None and request.lr_file is not None:
        raise SourceError("--lr and --lr-file both give the learned lr: pass one.")
    if request.lr is not None:
        return _positive_lr(request.lr, "--lr"), "stated (--lr)"
    tensor, origin = got.lr, "the preset's file beside the images"
    if request.lr_file is not None:
        tensor, origin = _tensor(safe_load(request.lr_file), request.lr_file.name), request.lr_file.name
        got.files[request.lr_file.name] = sha256(request.lr_file)
    if tensor is None:
        return None, None
    if tensor.numel() != 1 or not tensor.is_floating_point():
        raise SourceError(f"the learned lr file holds {str(tensor.dtype).removeprefix('torch.')} {tuple(tensor.shape)}, not one float.")
    return _positive_lr(float(tensor.reshape(())), origin), origin


def _positive_lr(value: float, what: str) -> float:
    if not value > 0 or not math.isfinite(value):
        raise SourceError(f"{what} {value} is not a positive learning rate.")
    return value


def _teacher(request: Request, tensors: dict[str, Tensor], recipe: dict[str, Any], learners: Registry[Any],
             kind: str) -> dict[str, Any] | None:
    """The online teacher, stored as ``teacher.*`` tensors (and so charged) with ``recipe['teacher']``."""
    if (request.teacher is None) != (request.teacher_weights is None):
        raise SourceError("--teacher and --teacher-weights go together: the learner spec of its architecture and its weights file.")
    if request.teacher is None or request.teacher_weights is None:
        return None
    if kind != "teacher":
        raise SourceError(f"--teacher stores a teacher, but --labels is {kind!r}: declare --labels teacher.")
    path = request.teacher_weights
    state: Any
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise SourceError(f"{path.name!r} is not a safetensors file ({exc}).") from exc
    else:
        state = safe_load(path)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise SourceError(f"{path.name!r} is not a state_dict of tensors.")
    tensors.update({labels.TEACHER_PREFIX + k.removeprefix("module."): v.detach().clone() for k, v in state.items()})
    recipe["teacher"] = request.teacher
    return {"spec": request.teacher, "weights": path.name, "sha256": sha256(path)}


def _test_selected(request: Request, got: Read) -> tuple[bool, str]:
    if request.test_selected is not None:
        return request.test_selected, "stated"
    if request.preset.best_on_test and got.facts.get("best_file"):
        return True, f"a *_best file of preset {request.preset.name!r}, kept for its test accuracy"
    return False, f"preset {request.preset.name!r} (not stated)"
