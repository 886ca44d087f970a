"""Tasks read from the datasets' own distribution files under a data root (``--data-root`` or
``$DDBENCH_DATA_ROOT``, default ``~/.ddbench/data``): MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100,
SVHN and Tiny-ImageNet-200 here, the ImageNet tasks in :mod:`ddbench_tasks.imagenet`.

:class:`FileImageTask` finds a dataset's folder, downloads its official archives when allowed
(``--download``), decodes it once into a uint8 cache beside the data (:mod:`ddbench_tasks.caches`)
and loads the cache: into memory as uint8, converted to normalised floats on the device
(:meth:`FileImageTask.to_device`), or memory-mapped where the data does not fit (ImageNet-1K).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ddbench.contracts import options
from ddbench.contracts.interfaces import MappedSplit, Split, TaskData
from ddbench.errors import TaskDataError
from ddbench_tasks.caches import Files, Part, cached, stats
from ddbench_tasks.caches import load as load_cached
from ddbench_tasks.download import Archive, fetch
from ddbench_tasks.formats import IDX_IMAGES, IDX_LABELS, read_cifar, read_idx, read_svhn
from ddbench_tasks.images import NO_FLIP, WITH_FLIP, ImageTask
from ddbench_tasks.splits import stratified_indices
from ddbench_tasks.zca import Zca

DEFAULT_ROOT = "~/.ddbench/data"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's; MTT's and SRe2L's


class FileImageTask(ImageTask):
    """A dataset read from its distribution files under ``root`` (``--data-root``, ``$DDBENCH_DATA_ROOT``).

    Subclasses name the folders it may be in (``folders``, relative to the root, first found wins),
    say which files mark it (:meth:`present`), what ``--download`` fetches (``archives``, into
    ``download_folder``) and how the files become splits (:meth:`parts`). Downloads only when
    ``download=True`` (or ``$DDBENCH_DOWNLOAD=1``, set by ``--download``). Option ``epochs`` as every
    image task (few epochs for a quick check).
    """

    folders: ClassVar[tuple[str, ...]]
    archives: ClassVar[tuple[Archive, ...]] = ()
    download_folder: ClassVar[str] = ""
    layout: ClassVar[str]  # the files it expects, for the message when they are absent
    mapped_data: ClassVar[bool] = False  # memory-mapped splits (ImageNet-1K) instead of arrays in memory

    def __init__(self, root: str | None = None, download: bool | None = None, val_fraction: float = 0.1, seed: int = 0,
                 epochs: int | None = None, zca: bool = False, teacher_mode: str = "train", kd_t2: bool = False):
        super().__init__(val_fraction, seed, epochs, zca, teacher_mode, kd_t2)
        if zca and self.mapped_data:
            raise ValueError(f"zca whitens a task held in memory; {self.name!r} is memory-mapped: leave zca out")
        self.root = Path(root or os.environ.get("DDBENCH_DATA_ROOT") or DEFAULT_ROOT).expanduser()
        self.download = os.environ.get("DDBENCH_DOWNLOAD") == "1" if download is None else download
        self._zca: Zca | None = None

    # -- finding and decoding --------------------------------------------------------------
    def present(self, folder: Path) -> bool:
        """Whether ``folder`` holds this dataset's files."""
        raise NotImplementedError

    def parts(self, folder: Path) -> tuple[dict[str, Any], Callable[[], dict[str, Part]]]:
        """What the cache key covers of the sources, and the function giving the splits ``train`` and ``test``."""
        raise NotImplementedError

    def to_fetch(self) -> tuple[Archive, ...]:
        """What ``--download`` fetches (default: ``archives``)."""
        return self.archives

    def locate(self) -> Path | None:
        """The first of ``folders`` under the root that holds the dataset, else ``None``."""
        for name in self.folders:
            folder = self.root / name
            if folder.is_dir() and self.present(folder):
                return folder
        return None

    def missing(self) -> str:
        """The one line saying where the files go, when they are absent and not downloaded."""
        where = " or ".join(str(self.root / f) for f in self.folders)
        how = ", or pass --download" if self.to_fetch() else ""
        return f"dataset {self.name!r} not found under {self.root}: put {self.layout} in {where}{how}."

    def prepare_data(self) -> None:
        self.cache()

    def cache(self) -> Path:
        """Find the files (downloading them when allowed), decode them into the cache if it is not
        there yet, and return the cache folder."""
        folder = self.locate()
        if folder is None:
            if not (self.download and self.to_fetch()):
                raise TaskDataError(self.missing())
            for archive in self.to_fetch():
                fetch(archive, self.root / self.download_folder)
            folder = self.locate()
            if folder is None:
                raise TaskDataError(f"the archives of {self.name!r} were downloaded into {self.root / self.download_folder} "
                                    f"but hold no {self.layout}: delete them and retry --download.")
        key, parts = self.parts(folder)
        return cached(folder, self.name, key, parts)

    # -- loading ---------------------------------------------------------------------------
    def raw(self) -> tuple[Split, Split]:
        """The (train, test) splits as uint8 pixels, read from the cache into memory."""
        cache = self.cache()
        out = []
        for name in ("train", "test"):
            x, y = load_cached(cache, name)
            out.append(Split(torch.from_numpy(x), torch.from_numpy(y)))
        return out[0], out[1]

    def load(self) -> TaskData:
        """Train (less the validation slice), validation and test, as uint8 pixels (memory-mapped for
        ImageNet-1K); :meth:`to_device` makes them the model's inputs."""
        if self._data is None:
            self._data = self._mapped() if self.mapped_data else self._in_memory()
        return self._data

    def _in_memory(self) -> TaskData:
        train, test = self.raw()
        rest, held = stratified_indices(train.y, self.val_fraction, self.seed)
        val = train.subset(held)
        train = Split(compact(train.x, rest), train.y[rest])
        if self.zca:  # the fit sees train only, pixels in [0, 1]
            self._zca = Zca.fit(train.x.float().div_(255))
        return TaskData(train, val, test)

    def _mapped(self) -> TaskData:
        cache = self.cache()
        y = torch.from_numpy(np.load(cache / "train.y.npy"))
        test_y = torch.from_numpy(np.load(cache / "test.y.npy"))
        rest, held = stratified_indices(y, self.val_fraction, self.seed)
        images = cache / "train.x.npy"
        return TaskData(MappedSplit(images, rest, y[rest], self.mean, self.std), MappedSplit(images, held, y[held], self.mean, self.std),
                        MappedSplit(cache / "test.x.npy", torch.arange(len(test_y)), test_y, self.mean, self.std))

    def to_device(self, split: Split, device: torch.device | str) -> Split:
        """uint8 pixels to the model's inputs: moved to ``device`` as they are, then there made floats
        in [0, 1] and normalised per channel (or whitened by the ZCA map, which runs on the CPU)."""
        if split.mapped:
            return split.to(device)
        if self._zca is not None:
            return Split(self._zca(split.x.float().div_(255)).to(device), split.y.to(device))
        x = split.x.to(device).float().div_(255)
        shape = (1, -1, 1, 1)
        x = (x - torch.tensor(self.mean, device=x.device).view(shape)) / torch.tensor(self.std, device=x.device).view(shape)
        return Split(x, split.y.to(device))


def compact(x: torch.Tensor, rows: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """``x[rows]`` for sorted distinct ``rows``, moved to the front of ``x`` in place (row ``rows[k]``
    is never before ``k``, so no row is overwritten before it is read): the train split without a
    second copy of its images beside it. The result is a view of ``x``'s first ``len(rows)`` rows."""
    for start in range(0, len(rows), chunk):
        index = rows[start:start + chunk]
        x[start:start + len(index)] = x[index]
    return x[: len(rows)]


def idx_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class IdxTask(FileImageTask):
    """An MNIST-format dataset: the four IDX files (gzipped or not), in torchvision's layout
    (``ROOT/<Name>/raw``), a plain folder ``ROOT/<name>`` or the data root itself."""

    input_shape = (1, 28, 28)
    base_url: ClassVar[str]
    md5: ClassVar[tuple[str, str, str, str]]
    layout = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each may be .gz)"
    common_augment = "dc"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "md5" in cls.__dict__:
            cls.archives = tuple(Archive(f"{cls.base_url}{name}.gz", md5) for name, md5 in zip(IDX_NAMES, cls.md5))

    def present(self, folder: Path) -> bool:
        return all(idx_file(folder, name) is not None for name in IDX_NAMES)

    def parts(self, folder: Path) -> tuple[dict[str, Any], Callable[[], dict[str, Part]]]:
        files = [idx_file(folder, name) for name in IDX_NAMES]
        paths = [f for f in files if f is not None]

        def read() -> dict[str, Part]:
            x_train, y_train, x_test, y_test = (read_idx(p, magic) for p, magic in zip(paths, (IDX_IMAGES, IDX_LABELS) * 2))
            for x, y, which in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
                if len(x) != len(y):
                    raise TaskDataError(f"{folder}: {which} holds {len(x)} images and {len(y)} labels: fetch the files again (--download).")
            return {"train": (x_train[:, None], y_train), "test": (x_test[:, None], y_test)}
        return {"sources": stats(paths)}, read


class Mnist(IdxTask):
    """MNIST (LeCun et al.): 60,000 train and 10,000 test 28x28 digits. Checksums: torchvision's."""

    name = "mnist"
    description = "MNIST from its IDX files under --data-root (MNIST/raw, mnist/ or the root)"
    reference_dataset = "mnist"
    mean, std = (0.1307,), (0.3081,)
    folders = ("MNIST/raw", "mnist", "")
    download_folder = "MNIST/raw"
    base_url = "https://ossci-datasets.s3.amazonaws.com/mnist/"
    md5 = ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
           "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")


class FashionMnist(IdxTask):
    """Fashion-MNIST (Xiao et al., 2017), the IDX layout of MNIST; checksums as its README publishes them."""

    name = "fashion-mnist"
    description = "Fashion-MNIST from its IDX files under --data-root (FashionMNIST/raw, fashion-mnist/ or the root)"
    reference_dataset = "fashion-mnist"
    mean, std = (0.2861,), (0.3530,)
    dsa_strategy = WITH_FLIP
    folders = ("FashionMNIST/raw", "fashion-mnist", "")
    download_folder = "FashionMNIST/raw"
    base_url = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    md5 = ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
           "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")


class Cifar10(FileImageTask):
    """CIFAR-10 (Krizhevsky, 2009), python version: ``cifar-10-batches-py/data_batch_1..5`` and
    ``test_batch`` (``batches.meta`` holds the class names, which are not read); checksum as the
    CIFAR page publishes it."""

    name = "cifar10"
    description = "CIFAR-10 from its python-version files under --data-root (cifar-10-batches-py/)"
    reference_dataset: ClassVar[str | None] = "cifar10"  # CIFAR-100 sets None
    input_shape = (3, 32, 32)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    dsa_strategy = WITH_FLIP
    folders: ClassVar[tuple[str, ...]] = ("cifar-10-batches-py",)
    layout: ClassVar[str] = "data_batch_1 .. data_batch_5 and test_batch"
    archives: ClassVar[tuple[Archive, ...]] = (
        Archive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", unpack=True),)
    train_files: ClassVar[tuple[str, ...]] = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files: ClassVar[tuple[str, ...]] = ("test_batch",)
    label_key: ClassVar[str] = "labels"

    def present(self, folder: Path) -> bool:
        return any((folder / f).is_file() for f in self.train_files + self.test_files)

    def parts(self, folder: Path) -> tuple[dict[str, Any], Callable[[], dict[str, Part]]]:
        def read(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
            batches = [read_cifar(folder / n, self.label_key) for n in names]
            return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
        sources = [folder / f for f in self.train_files + self.test_files if (folder / f).is_file()]
        return {"sources": stats(sources)}, lambda: {"train": read(self.train_files), "test": read(self.test_files)}


class Cifar100(Cifar10):
    """CIFAR-100 with its 100 fine labels (``cifar-100-python/train``, ``test``; ``meta`` holds the
    names), normalised with CIFAR-10's statistics as the reference code does (docs/methods.md §10.5)."""

    name = "cifar100"
    description = "CIFAR-100 (fine labels) from its python-version files under --data-root (cifar-100-python/)"
    reference_dataset = None
    num_classes = 100
    folders = ("cifar-100-python",)
    layout = "train and test"
    archives = (Archive("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", unpack=True),)
    train_files, test_files, label_key = ("train",), ("test",), "fine_labels"


SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN_MD5 = {"train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373", "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
            "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7"}  # torchvision's (the SVHN page publishes none)


class Svhn(FileImageTask):
    """SVHN cropped digits (Netzer et al., 2011): ``train_32x32.mat`` (73,257) and ``test_32x32.mat``
    (26,032); ``extra=true`` adds ``extra_32x32.mat`` (531,131) to train. Label 10 is the digit 0.
    Statistics and the no-flip strategy of the DC code for SVHN (digits are not flipped)."""

    name = "svhn"
    description = "SVHN cropped digits from its .mat files under --data-root (svhn/ or the root)"
    reference_dataset = "svhn"
    input_shape = (3, 32, 32)
    mean, std = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
    dsa_strategy = NO_FLIP
    folders = ("svhn", "SVHN", "")
    download_folder = "svhn"
    layout = "train_32x32.mat and test_32x32.mat (extra_32x32.mat with extra=true)"

    def __init__(self, root: str | None = None, download: bool | None = None, val_fraction: float = 0.1, seed: int = 0,
                 epochs: int | None = None, zca: bool = False, teacher_mode: str = "train", kd_t2: bool = False, extra: bool = False):
        super().__init__(root, download, val_fraction, seed, epochs, zca, teacher_mode, kd_t2)
        options.flags(extra=extra)
        self.extra = extra
        self.files = [name for name in SVHN_MD5 if extra or name != "extra_32x32.mat"]

    def to_fetch(self) -> tuple[Archive, ...]:
        return tuple(Archive(SVHN_URL + name, SVHN_MD5[name]) for name in self.files)

    def present(self, folder: Path) -> bool:
        return all((folder / f).is_file() for f in self.files)

    def parts(self, folder: Path) -> tuple[dict[str, Any], Callable[[], dict[str, Part]]]:
        def read() -> dict[str, Part]:
            train = [read_svhn(folder / f) for f in self.files if f != "test_32x32.mat"]
            return {"train": (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])),
                    "test": read_svhn(folder / "test_32x32.mat")}
        return {"sources": stats(folder / f for f in self.files)}, read


class TinyImageNet(FileImageTask):
    """Tiny-ImageNet-200 (CS231n): ``wnids.txt``, ``train/<wnid>/images/*.JPEG`` (500 per class) and
    ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt`` (50 per class), which serves as the
    test split as papers use it. Classes in sorted wnid order (torchvision's ImageFolder, as MTT);
    64x64 RGB (grayscale images converted); ImageNet statistics, as MTT. Held in memory as uint8
    (1.2 GB for train). Checksum: the one published beside the archive by its users (Stanford
    publishes none)."""

    name = "tiny-imagenet"
    description = "Tiny-ImageNet-200 from its folder under --data-root (tiny-imagenet-200/), val as test"
    reference_dataset = "tiny-imagenet"
    num_classes = 200
    input_shape = (3, 64, 64)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    dsa_strategy = WITH_FLIP
    folders = ("tiny-imagenet-200",)
    layout = "wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt"
    archives = (Archive("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de", unpack=True),)

    def present(self, folder: Path) -> bool:
        return (folder / "wnids.txt").is_file()

    def parts(self, folder: Path) -> tuple[dict[str, Any], Callable[[], dict[str, Part]]]:
        wnids = sorted(line.strip() for line in (folder / "wnids.txt").read_text().splitlines() if line.strip())
        if len(wnids) != self.num_classes:
            raise TaskDataError(f"{folder / 'wnids.txt'} lists {len(wnids)} classes, not {self.num_classes}: fetch the dataset again.")
        class_dirs = []
        for wnid in wnids:
            images = folder / "train" / wnid / "images"
            if not images.is_dir():
                raise TaskDataError(f"{folder} has no train/{wnid}/images folder for class {wnid} of wnids.txt: the dataset is "
                                    "incomplete; fetch it again (--download).")
            class_dirs.append(images)
        annotations = folder / "val" / "val_annotations.txt"
        if not annotations.is_file() or not (folder / "val" / "images").is_dir():
            raise TaskDataError(f"{folder} has no val/images with val/val_annotations.txt: the dataset is incomplete; fetch it again.")
        key = {"sources": stats([folder / "wnids.txt", annotations, folder / "val" / "images", *class_dirs]), "size": 64}

        def read() -> dict[str, Part]:
            index = {w: i for i, w in enumerate(wnids)}
            train = [(p, index[w]) for w, d in zip(wnids, class_dirs) for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
            test = []
            for n, line in enumerate(annotations.read_text().splitlines(), 1):
                fields = line.split("\t")
                if len(fields) < 2 or fields[1] not in index:
                    raise TaskDataError(f"{annotations} line {n} is not '<file>\\t<wnid>...' with a wnid of wnids.txt: "
                                        "the file is damaged; fetch the dataset again.")
                test.append((folder / "val" / "images" / fields[0], index[fields[1]]))
            return {"train": files_part(train, 64), "test": files_part(test, 64)}
        return key, read


IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def files_part(items: list[tuple[Path, int]], size: int) -> Files:
    """Image files and their labels, to be decoded at ``size`` px."""
    return Files([p for p, _ in items], np.array([c for _, c in items], dtype=np.int64), size)


FILE_TASKS = (Mnist, FashionMnist, Cifar10, Cifar100, Svhn, TinyImageNet)
