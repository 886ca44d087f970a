"""ImageNet tasks: the six 10-class subsets MTT evaluates at 128 px (ImageNette, ImageWoof,
ImageFruit, ImageYellow, ImageMeow, ImageSquawk) and ImageNet-1K at 64, 128 or 224 px.

They read an ImageNet-1K folder in the ILSVRC layout under the data root, ``imagenet/`` or
Kaggle's ``ILSVRC/Data/CLS-LOC/``: ``train/<wnid>/*.JPEG`` and ``val/`` either as ``val/<wnid>/``
folders or flat with the labels in ``LOC_val_solution.csv`` (Kaggle's file: ``ImageId`` and a
``PredictionString`` whose first word is the wnid), found in that folder or one above it up to the
data root. ImageNet's validation set is the test split, as papers use it; validation is carved
from train. ImageNette also reads its own archive (``source=imagenette``: fast.ai's
``imagenette2/{train,val}/<wnid>/``, ``--download`` fetches it). ImageNet itself has no public
download. Images: RGB, shorter side resized to the resolution, centre crop (MTT: ``Resize(128)``
then ``CenterCrop(128)``); torchvision's ImageNet statistics.

The subsets' classes are MTT's (``utils.py``, ``Config``, in GeorgeCazenavette/mtt-distillation),
which lists them as indices into the sorted wnids of ImageNet-1K; the wnids below are those
indices looked up in that order, and a subset's label c is the c-th of its list, as MTT's
``class_map``.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ddbench.contracts import options
from ddbench.errors import TaskDataError
from ddbench_tasks.caches import Part, stats
from ddbench_tasks.download import Archive
from ddbench_tasks.files import IMAGE_SUFFIXES, IMAGENET_MEAN, IMAGENET_STD, FileImageTask, files_part
from ddbench_tasks.images import WITH_FLIP

WNID = re.compile(r"^n\d{8}$")
IMAGENET_FOLDERS = ("imagenet", "ILSVRC/Data/CLS-LOC")
IMAGENET_LAYOUT = ("ImageNet's train/<wnid>/*.JPEG and val/ (val/<wnid>/ folders, or flat val/*.JPEG with "
                   "LOC_val_solution.csv beside it or above it)")
VAL_LABELS = "LOC_val_solution.csv"

# MTT's Config: (its ImageNet class index, wnid), in its order.
SUBSETS: dict[str, tuple[tuple[int, str], ...]] = {
    "imagenette": ((0, "n01440764"), (217, "n02102040"), (482, "n02979186"), (491, "n03000684"), (497, "n03028079"),
                   (566, "n03394916"), (569, "n03417042"), (571, "n03425413"), (574, "n03445777"), (701, "n03888257")),
    "imagewoof": ((193, "n02096294"), (182, "n02093754"), (258, "n02111889"), (162, "n02088364"), (155, "n02086240"),
                  (167, "n02089973"), (159, "n02087394"), (273, "n02115641"), (207, "n02099601"), (229, "n02105641")),
    "imagefruit": ((953, "n07753275"), (954, "n07753592"), (949, "n07745940"), (950, "n07747607"), (951, "n07749582"),
                   (957, "n07768694"), (952, "n07753113"), (945, "n07720875"), (943, "n07718472"), (948, "n07742313")),
    "imageyellow": ((309, "n02206856"), (986, "n12057211"), (954, "n07753592"), (951, "n07749582"), (987, "n12144580"),
                    (779, "n04146614"), (599, "n03530642"), (291, "n02129165"), (72, "n01773157"), (11, "n01531178")),
    "imagemeow": ((281, "n02123045"), (282, "n02123159"), (283, "n02123394"), (284, "n02123597"), (285, "n02124075"),
                  (291, "n02129165"), (292, "n02129604"), (290, "n02128925"), (289, "n02128757"), (287, "n02127052")),
    "imagesquawk": ((84, "n01806143"), (130, "n02007558"), (88, "n01818515"), (144, "n02051845"), (145, "n02056570"),
                    (22, "n01614925"), (96, "n01843383"), (9, "n01518878"), (100, "n01860187"), (89, "n01819313")),
}


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def class_folders(split: Path, wnids: list[str], what: str) -> list[Path]:
    """``split/<wnid>`` for each wnid; a missing one is a one-line error naming it."""
    folders = []
    for wnid in wnids:
        folder = split / wnid
        if not folder.is_dir():
            raise TaskDataError(f"{split} has no class folder {wnid} ({what}): the dataset is incomplete; "
                                "restore that folder or point --data-root at a complete copy.")
        folders.append(folder)
    return folders


def val_labels(folder: Path, root: Path) -> Path | None:
    """``LOC_val_solution.csv`` in ``folder`` or a folder above it, up to ``root``."""
    for place in (folder, *folder.parents):
        if (place / VAL_LABELS).is_file():
            return place / VAL_LABELS
        if place == root:
            break
    return None


def flat_val(folder: Path, labels: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    """The flat ``val/`` images of the classes ``wnids``, labelled by the ``LOC_val_solution.csv`` file ``labels``."""
    index = {w: i for i, w in enumerate(wnids)}
    items = []
    with labels.open(newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if n == 1 and row[:1] == ["ImageId"]:
                continue
            words = row[1].split() if len(row) >= 2 else []
            if not words or not WNID.match(words[0]):
                raise TaskDataError(f"{labels} line {n} is not 'ImageId,<wnid> ...': the file is damaged.")
            if words[0] in index:
                items.append((folder / "val" / f"{row[0]}.JPEG", index[words[0]]))
    return sorted(items)


def imagenet_parts(task: FileImageTask, folder: Path, wnids: list[str], size: int,
                   what: str) -> tuple[dict[str, Any], Callable[[], dict[str, Part]]]:
    """The cache key and the splits of the classes ``wnids`` of an ImageNet folder at ``size`` px."""
    train_dirs = class_folders(folder / "train", wnids, what)
    val = folder / "val"
    by_folder = any(WNID.match(p.name) and p.is_dir() for p in val.iterdir())
    val_dirs = class_folders(val, wnids, what) if by_folder else []
    labels = None if by_folder else val_labels(folder, task.root)
    if not by_folder and labels is None:
        raise TaskDataError(f"{val} holds no <wnid> folders and no {VAL_LABELS} was found in {folder} or above it: put the "
                            f"validation labels there ({VAL_LABELS}: ImageId,PredictionString), or sort val/ into wnid folders.")
    sources = [*train_dirs, *val_dirs, val, *([labels] if labels else [])]

    def read() -> dict[str, Part]:
        train = [(p, c) for c, d in enumerate(train_dirs) for p in image_files(d)]
        if labels is None:
            test = [(p, c) for c, d in enumerate(val_dirs) for p in image_files(d)]
        else:
            test = flat_val(folder, labels, wnids)
        for name, items in (("train", train), ("val", test)):
            counts = [0] * len(wnids)
            for _, c in items:
                counts[c] += 1
            if 0 in counts:
                raise TaskDataError(f"{folder / name} has no image of class {wnids[counts.index(0)]} ({what}): the dataset is "
                                    "incomplete; restore it or point --data-root at a complete copy.")
        return {"train": files_part(train, size), "test": files_part(test, size)}
    return {"sources": stats(sources), "size": size, "wnids": wnids}, read


def imagenet_missing(task: FileImageTask) -> str:
    """:meth:`FileImageTask.missing`, saying with ``--download`` that ImageNet has none."""
    note = " (ImageNet has no public download: get ILSVRC2012 from image-net.org or Kaggle)" if task.download else ""
    return FileImageTask.missing(task)[:-1] + note + "."


class ImageNetSubset(FileImageTask):
    """One of MTT's 10-class ImageNet subsets at 128 px, read from an ImageNet-1K folder (module doc),
    held in memory as uint8."""

    num_classes = 10
    input_shape = (3, 128, 128)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    dsa_strategy = WITH_FLIP
    folders = IMAGENET_FOLDERS
    layout = IMAGENET_LAYOUT

    @property
    def wnids(self) -> list[str]:
        return [w for _, w in SUBSETS[self.name]]

    def present(self, folder: Path) -> bool:
        return (folder / "train").is_dir() and (folder / "val").is_dir()

    def missing(self) -> str:
        return imagenet_missing(self)

    def parts(self, folder: Path) -> tuple[dict[str, Any], Callable[[], dict[str, Part]]]:
        return imagenet_parts(self, folder, self.wnids, self.input_shape[-1], f"a class of {self.name}")


IMAGENETTE_ARCHIVE = Archive("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz", "fe2fc210e6bb7c5664d602c3cd71e612",
                             unpack=True)  # the checksum torchvision's Imagenette gives (fast.ai publishes none)


class ImageNette(ImageNetSubset):
    """ImageNette: MTT's subset from an ImageNet folder (``source=imagenet``, the default, as MTT), or
    from fast.ai's own archive (``source=imagenette``: ``imagenette2/`` (or ``-320``, ``-160``) with
    ``train/<wnid>/`` and ``val/<wnid>/``; ``--download`` fetches ``imagenette2.tgz``). Both give
    the same 10 classes in MTT's order; their images differ (fast.ai's val is not all of
    ImageNet's), so the source is part of the cell's settings."""

    name = "imagenette"
    description = "ImageNette (MTT's 10-class subset, 128 px) from an ImageNet folder, or its own archive with source=imagenette"
    reference_dataset = "imagenette"

    def __init__(self, root: str | None = None, download: bool | None = None, val_fraction: float = 0.1, seed: int = 0,
                 epochs: int | None = None, zca: bool = False, teacher_mode: str = "train", kd_t2: bool = False,
                 source: str = "imagenet"):
        super().__init__(root, download, val_fraction, seed, epochs, zca, teacher_mode, kd_t2)
        options.one_of("source", source, ("imagenet", "imagenette"))
        self.source = source

    @property
    def folders(self) -> tuple[str, ...]:  # type: ignore[override]  # the source option chooses
        return IMAGENET_FOLDERS if self.source == "imagenet" else ("imagenette2", "imagenette2-320", "imagenette2-160")

    @property
    def layout(self) -> str:  # type: ignore[override]  # the source option chooses
        return IMAGENET_LAYOUT if self.source == "imagenet" else "fast.ai's imagenette2 folders train/<wnid>/ and val/<wnid>/"

    def to_fetch(self) -> tuple[Archive, ...]:
        return () if self.source == "imagenet" else (IMAGENETTE_ARCHIVE,)

    def parts(self, folder: Path) -> tuple[dict[str, Any], Callable[[], dict[str, Part]]]:
        key, read = super().parts(folder)
        return {**key, "source": self.source}, read


class ImageWoof(ImageNetSubset):
    """ImageWoof: MTT's 10 dog breeds."""

    name = reference_dataset = "imagewoof"
    description = "ImageWoof (MTT's 10-class ImageNet subset, 128 px) from an ImageNet folder under --data-root"


class ImageFruit(ImageNetSubset):
    """ImageFruit: MTT's 10 fruits."""

    name = reference_dataset = "imagefruit"
    description = "ImageFruit (MTT's 10-class ImageNet subset, 128 px) from an ImageNet folder under --data-root"


class ImageYellow(ImageNetSubset):
    """ImageYellow: MTT's 10 yellow things."""

    name = reference_dataset = "imageyellow"
    description = "ImageYellow (MTT's 10-class ImageNet subset, 128 px) from an ImageNet folder under --data-root"


class ImageMeow(ImageNetSubset):
    """ImageMeow: MTT's 10 cats."""

    name = reference_dataset = "imagemeow"
    description = "ImageMeow (MTT's 10-class ImageNet subset, 128 px) from an ImageNet folder under --data-root"


class ImageSquawk(ImageNetSubset):
    """ImageSquawk: MTT's 10 birds."""

    name = reference_dataset = "imagesquawk"
    description = "ImageSquawk (MTT's 10-class ImageNet subset, 128 px) from an ImageNet folder under --data-root"


SUBSET_TASKS = (ImageNette, ImageWoof, ImageFruit, ImageYellow, ImageMeow, ImageSquawk)
RESOLUTIONS = (64, 128, 224)


class ImageNet1k(FileImageTask):
    """ImageNet-1K (ILSVRC 2012) from the ILSVRC folder layout (module doc) at ``res`` px (64, 128 or
    224), its 1,000 classes in sorted wnid order (torchvision's), ImageNet's validation set as the
    test split, validation a ``val_fraction`` of train (1 %: about 12,800 images). Too large for
    memory (15.7 GB of uint8 at 64 px, 193 GB at 224), it is memory-mapped: its splits are
    :class:`~ddbench.contracts.interfaces.MappedSplit`, read a batch at a time, and only distillers
    that read through that accessor run on it (``random``, ``herding`` with ``features=random``, and
    with ``teacher_weights`` the teacher-based ones)."""

    name = "imagenet"
    description = "ImageNet-1K from the ILSVRC folder layout under --data-root at res=64|128|224, memory-mapped"
    reference_dataset = "imagenet"
    num_classes = 1000
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    dsa_strategy = WITH_FLIP
    folders = IMAGENET_FOLDERS
    layout = IMAGENET_LAYOUT
    mapped_data = True

    def __init__(self, root: str | None = None, download: bool | None = None, val_fraction: float = 0.01, seed: int = 0,
                 epochs: int | None = None, teacher_mode: str = "train", kd_t2: bool = False, res: int = 64):
        options.one_of("res", res, RESOLUTIONS)
        self.input_shape = (3, res, res)
        super().__init__(root, download, val_fraction, seed, epochs, False, teacher_mode, kd_t2)
        self.res = res

    def present(self, folder: Path) -> bool:
        return (folder / "train").is_dir() and (folder / "val").is_dir()

    def missing(self) -> str:
        return imagenet_missing(self)

    def parts(self, folder: Path) -> tuple[dict[str, Any], Callable[[], dict[str, Part]]]:
        wnids = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir() and WNID.match(p.name))
        if len(wnids) != self.num_classes:
            raise TaskDataError(f"{folder / 'train'} holds {len(wnids)} wnid folders, not ImageNet-1K's {self.num_classes}: "
                                "the dataset is incomplete; point --data-root at a complete copy.")
        return imagenet_parts(self, folder, wnids, self.res, "a class of ImageNet-1K")


IMAGENET_TASKS = (*SUBSET_TASKS, ImageNet1k)
