"""Writers of small datasets in their distribution files' exact formats, for the tests (and for the
measurements in CHANGELOG.md, at full size): IDX files with their magic numbers, CIFAR's python
pickles as Python 2 wrote them (protocol 2, str keys and numpy arrays by
``numpy.core.multiarray._reconstruct``), SVHN's ``.mat`` variables, Tiny-ImageNet's and ImageNet's
folder layouts with their annotation files, and JPEGs written by Pillow. Images are smooth random
patterns plus a class-dependent tint, so that a classifier can learn something from them."""
from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

IDX_IMAGES, IDX_LABELS = 2051, 2049


# -- IDX ------------------------------------------------------------------------------------
def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An IDX file: big-endian magic number, the sizes as big-endian uint32, the uint8 values."""
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_set(folder: Path, n_train: int, n_test: int, gz: bool, seed: int = 0) -> None:
    """The four MNIST files with ``n_train`` and ``n_test`` 28x28 images (every class present)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = (rng.random((n, 28, 28)) * 60 + labels[:, None, None] * 19).astype(np.uint8)
        for name, array, magic in ((f"{prefix}-images-idx3-ubyte", images, IDX_IMAGES), (f"{prefix}-labels-idx1-ubyte", labels, IDX_LABELS)):
            data = idx_bytes(array, magic)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)


# -- CIFAR's Python 2 pickles -------------------------------------------------------------------
def py2_pickle(obj: object) -> bytes:
    """``obj`` pickled as Python 2's cPickle wrote CIFAR's files with protocol 2: str as BINSTRING
    (which Python 3 decodes by its ``encoding``), numpy arrays by ``numpy.core.multiarray._reconstruct``."""
    out = bytearray(b"\x80\x02")

    def string(b: bytes) -> None:
        out.extend(b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + len(b).to_bytes(4, "little") + b)

    def put(o: object) -> None:
        if o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"K" + bytes([o]) if 0 <= o < 256 else b"M" + o.to_bytes(2, "little") if 0 <= o < 65536
                       else b"J" + o.to_bytes(4, "little", signed=True))
        elif isinstance(o, str):
            string(o.encode("latin1"))
        elif isinstance(o, bytes):
            string(o)
        elif isinstance(o, tuple):
            out.extend(b"(")
            for item in o:
                put(item)
            out.extend(b"t")
        elif isinstance(o, list):
            out.extend(b"]")
            if o:
                out.extend(b"(")
                for item in o:
                    put(item)
                out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for key, value in o.items():
                put(key)
                put(value)
            out.extend(b"u")
        elif isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            put((0,))
            put("b")
            out.extend(b"\x87R")  # TUPLE3, REDUCE: _reconstruct(ndarray, (0,), 'b')
            out.extend(b"(")
            put(1)
            put(tuple(o.shape))
            out.extend(b"cnumpy\ndtype\n")
            put(("u1", False, True))
            out.extend(b"R")
            put((3, "|", None, None, None, -1, -1, 0))
            out.extend(b"b")  # BUILD the dtype
            put(False)
            string(np.ascontiguousarray(o).tobytes())
            out.extend(b"tb")  # the state tuple, BUILD the array
        else:
            raise TypeError(type(o))

    put(obj)
    out.extend(b".")
    return bytes(out)


def cifar_batch(n: int, classes: int, label_key: str, rng: np.random.Generator, offset: int = 0) -> dict[str, object]:
    labels = [(offset + i) % classes for i in range(n)]
    tint = np.array(labels)[:, None] * (200 // classes + 1) % 200
    data = (rng.random((n, 3072)) * 55 + tint).astype(np.uint8)
    batch: dict[str, object] = {"batch_label": "training batch 1 of 5", label_key: labels, "data": data,
                                "filenames": [f"img_{offset + i}.png" for i in range(n)]}
    if label_key == "fine_labels":
        batch["coarse_labels"] = [c // 5 for c in labels]
    return batch


def write_cifar10(root: Path, per_batch: int, n_test: int, seed: int = 0) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(py2_pickle(cifar_batch(per_batch, 10, "labels", rng, i * per_batch)))
    (folder / "test_batch").write_bytes(py2_pickle(cifar_batch(n_test, 10, "labels", rng)))
    (folder / "batches.meta").write_bytes(py2_pickle({"num_cases_per_batch": per_batch, "label_names": [f"c{i}" for i in range(10)],
                                                      "num_vis": 3072}))
    return folder


def write_cifar100(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (folder / "train").write_bytes(py2_pickle(cifar_batch(n_train, 100, "fine_labels", rng)))
    (folder / "test").write_bytes(py2_pickle(cifar_batch(n_test, 100, "fine_labels", rng)))
    (folder / "meta").write_bytes(py2_pickle({"fine_label_names": [f"f{i}" for i in range(100)],
                                              "coarse_label_names": [f"c{i}" for i in range(20)]}))
    return folder


# -- SVHN -----------------------------------------------------------------------------------
def write_svhn(folder: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """``train_32x32.mat`` and ``test_32x32.mat``: X (32, 32, 3, N) uint8 and y (N, 1) in 1..10 (10 is the digit 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        digits = np.arange(n) % 10
        x = (rng.random((32, 32, 3, n)) * 60 + digits * 19).astype(np.uint8)
        y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
        scipy.io.savemat(folder / name, {"X": x, "y": y})
    return folder


# -- image folders ----------------------------------------------------------------------------
def image(c: int, classes: int, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A smooth random pattern tinted by class ``c``, ``size`` (width, height)."""
    w, h = size
    small = rng.random((max(2, h // 8), max(2, w // 8), 3))
    base = np.asarray(Image.fromarray((small * 120).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float64)
    hue = np.array([np.sin(c * 2.4), np.sin(c * 2.4 + 2.1), np.sin(c * 2.4 + 4.2)]) * 60 + 70 * (c % 2)
    return Image.fromarray(np.clip(base + hue, 0, 255).astype(np.uint8))


def jpeg(path: Path, picture: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=85)
    path.write_bytes(buffer.getvalue())


def wnids(count: int) -> list[str]:
    return [f"n{10_000_000 + 37 * i:08d}" for i in range(count)]


def write_tiny_imagenet(root: Path, per_class: int, val_per_class: int, classes: int = 200, seed: int = 0) -> Path:
    """Tiny-ImageNet-200's layout: wnids.txt, train/<wnid>/images/<wnid>_<i>.JPEG with <wnid>_boxes.txt,
    val/images/val_<i>.JPEG with val/val_annotations.txt; 64x64 JPEGs (every fifth one grayscale)."""
    folder = root / "tiny-imagenet-200"
    rng = np.random.default_rng(seed)
    names = wnids(classes)
    (folder / "val" / "images").mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in names))
    lines, k = [], 0
    for c, w in enumerate(names):
        boxes = []
        for i in range(per_class):
            picture = image(c, classes, (64, 64), rng)
            jpeg(folder / "train" / w / "images" / f"{w}_{i}.JPEG", picture.convert("L") if i % 5 == 4 else picture)
            boxes.append(f"{w}_{i}.JPEG\t0\t0\t63\t63\n")
        (folder / "train" / w / f"{w}_boxes.txt").write_text("".join(boxes))
        for _ in range(val_per_class):
            jpeg(folder / "val" / "images" / f"val_{k}.JPEG", image(c, classes, (64, 64), rng))
            lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63\n")
            k += 1
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    return folder


def write_imagenet(folder: Path, names: list[str], per_class: int, val_per_class: int, flat_val: bool,
                   size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    """The ILSVRC layout: train/<wnid>/<wnid>_<i>.JPEG; val/<wnid>/ folders, or flat val/ILSVRC2012_val_<k>.JPEG
    with LOC_val_solution.csv (Kaggle's: ImageId,PredictionString) beside it. Images ``size`` (w, h), not square."""
    rng = np.random.default_rng(seed)
    rows = []
    k = 0
    for c, w in enumerate(names):
        for i in range(per_class):
            jpeg(folder / "train" / w / f"{w}_{i}.JPEG", image(c, len(names), size, rng))
        for _ in range(val_per_class):
            k += 1
            image_id = f"ILSVRC2012_val_{k:08d}"
            jpeg(folder / "val" / (image_id + ".JPEG" if flat_val else f"{w}/{image_id}.JPEG"), image(c, len(names), size, rng))
            rows.append([image_id, f"{w} 1 2 {size[0] - 1} {size[1] - 1}"])
    if flat_val:
        with (folder / "LOC_val_solution.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["ImageId", "PredictionString"])
            writer.writerows(rows)
    return folder
