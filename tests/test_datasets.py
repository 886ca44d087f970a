"""The datasets read from their own distribution files, tested on files generated in the exact formats
(tests/dataset_files.py): readers, layouts, the decoded cache, memory-mapped ImageNet, splits,
downloads (a local HTTP server), one-line errors with exit status 2, the ImageNet-form ResNet and a
teacher read from a weights file; and, in the slow lane, ``ddbench run`` scoring random and dm on
every task."""
from __future__ import annotations

import gzip
import http.server
import io
import json
import os
import pickle
import sqlite3
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset_files import (
    idx_bytes,
    py2_pickle,
    wnids,
    write_cifar10,
    write_cifar100,
    write_idx_set,
    write_imagenet,
    write_svhn,
    write_tiny_imagenet,
)
from ddbench.cli import main
from ddbench.contracts.interfaces import MappedSplit, RunContext, Split, TaskView
from ddbench.errors import DDBenchError, TaskDataError
from ddbench.plugins import instantiate
from ddbench.run import worker
from ddbench.run.suite import task_view
from ddbench_learners.resnet import ImageNetResNet
from ddbench_tasks import download
from ddbench_tasks.download import Archive, fetch
from ddbench_tasks.files import Mnist
from ddbench_tasks.imagenet import SUBSETS
from ddbench_tasks.splits import stratified_indices

SUBSET_WNIDS = sorted({w for classes in SUBSETS.values() for _, w in classes})
FASTAI_IMAGENETTE = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079",  # fast.ai's imagenette README
                     "n03394916", "n03417042", "n03425413", "n03445777", "n03888257"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Every dataset but ImageNet-1K, small, in its layout under one data root."""
    root = tmp_path_factory.mktemp("data")
    write_idx_set(root / "MNIST" / "raw", 60, 30, gz=True)  # torchvision's layout, gzipped
    write_idx_set(root / "fashion-mnist", 60, 30, gz=False)  # a plain folder, not gzipped
    write_cifar10(root, 12, 30)
    write_cifar100(root, 200, 100)
    write_svhn(root / "svhn", 60, 30)
    write_tiny_imagenet(root, 2, 1)
    write_imagenet(root / "imagenet", SUBSET_WNIDS, 3, 1, flat_val=True)
    imagenette = root / "imagenette2"
    write_imagenet(imagenette, FASTAI_IMAGENETTE, 3, 2, flat_val=False, size=(50, 40), seed=1)
    return root


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> Path:
    """A 1000-class ImageNet folder, 2 train images a class and a flat val of 1 a class with Kaggle's label file."""
    root = tmp_path_factory.mktemp("imagenet1k")
    write_imagenet(root / "ILSVRC" / "Data" / "CLS-LOC", wnids(1000), 2, 1, flat_val=True, size=(12, 10))
    (root / "ILSVRC" / "Data" / "CLS-LOC" / "LOC_val_solution.csv").rename(root / "LOC_val_solution.csv")  # Kaggle: beside ILSVRC/
    return root


def load(manager, name: str, root: Path, **options):
    task = instantiate(manager.tasks.get(name), {"root": str(root), **options})
    return task, task.load()


# -- readers and layouts ---------------------------------------------------------------------
@pytest.mark.parametrize("name, folder, gz", [("mnist", "MNIST/raw", True), ("fashion-mnist", "fashion-mnist", False)])
def test_idx_files_load_gzipped_or_not_in_either_layout(manager, root, name, folder, gz):
    files = sorted(p.name for p in (root / folder).iterdir() if p.is_file())
    assert all(f.endswith(".gz") == gz for f in files) and len(files) == 4
    task, data = load(manager, name, root)
    raw = (root / folder / ("train-images-idx3-ubyte" + (".gz" if gz else ""))).read_bytes()
    images = np.frombuffer(gzip.decompress(raw) if gz else raw, np.uint8, offset=16).reshape(60, 28, 28)
    assert len(data.train) + len(data.val) == 60 and len(data.test) == 30
    assert data.train.x.dtype == torch.uint8 and tuple(data.train.x.shape[1:]) == (1, 28, 28)
    rows = {bytes(r) for r in images.reshape(60, -1)}
    assert all(bytes(r.numpy()) in rows for r in data.train.x.flatten(1))
    view = task.to_device(data.test, "cpu")
    expected = (data.test.x.float() / 255 - task.mean[0]) / task.std[0]
    assert torch.allclose(view.x, expected) and view.x.dtype == torch.float32


@pytest.mark.parametrize("name, key", [("cifar10", "labels"), ("cifar100", "fine_labels")])
def test_cifar_python_pickles_load_through_the_restricted_unpickler(manager, root, name, key):
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    first = folder / ("test_batch" if name == "cifar10" else "test")
    assert first.read_bytes()[:2] == b"\x80\x02"  # protocol 2, as the Python 2 files
    reference = pickle.loads(first.read_bytes(), encoding="latin1")  # what an unrestricted reader gets
    _, data = load(manager, name, root)
    assert torch.equal(data.test.x, torch.from_numpy(reference["data"].reshape(-1, 3, 32, 32)))
    assert data.test.y.tolist() == reference[key]
    assert len(data.train) + len(data.val) == (60 if name == "cifar10" else 200)


def test_svhn_label_10_is_the_digit_0_and_extra_joins_train(manager, root, tmp_path):
    _, data = load(manager, "svhn", root)
    assert set(data.test.y.tolist()) == set(range(10)) and tuple(data.test.x.shape[1:]) == (3, 32, 32)
    import scipy.io
    mat = scipy.io.loadmat(root / "svhn" / "test_32x32.mat")
    assert torch.equal(data.test.x[3], torch.from_numpy(mat["X"][:, :, :, 3].transpose(2, 0, 1)))
    assert int(mat["y"][10, 0]) == 10 and int(data.test.y[10]) == 0
    write_svhn(tmp_path / "svhn", 20, 10)
    (tmp_path / "svhn" / "train_32x32.mat").rename(tmp_path / "svhn" / "extra_32x32.mat")
    write_svhn(tmp_path / "other", 30, 10)
    (tmp_path / "other" / "train_32x32.mat").rename(tmp_path / "svhn" / "train_32x32.mat")
    _, extra = load(manager, "svhn", tmp_path, extra=True)
    assert len(extra.train) + len(extra.val) == 50


def test_tiny_imagenet_sorted_wnids_and_val_annotations_as_test(manager, root):
    task, data = load(manager, "tiny-imagenet", root)
    assert (task.num_classes, task.input_shape) == (200, (3, 64, 64)) and len(data.test) == 200
    assert sorted(data.test.y.tolist()) == list(range(200))
    lines = (root / "tiny-imagenet-200" / "val" / "val_annotations.txt").read_text().splitlines()
    names = sorted(line.split("\t")[1] for line in lines)
    first = lines[0].split("\t")
    assert int(data.test.y[0]) == names.index(first[1])  # val/images is read in the file's order
    assert data.train.x.dtype == torch.uint8 and len(data.train) + len(data.val) == 400


@pytest.mark.parametrize("name", sorted(SUBSETS))
def test_imagenet_subsets_are_mtts_classes_in_mtts_order(manager, root, name):
    task, data = load(manager, name, root)
    assert task.input_shape == (3, 128, 128) and len(data.test) == 10
    order = [w for _, w in SUBSETS[name]]
    assert len(set(order)) == 10 and all(w in SUBSET_WNIDS for w in order)
    lines = (root / "imagenet" / "LOC_val_solution.csv").read_text().splitlines()[1:]
    labels = {row.split(",")[0]: row.split(",")[1].split()[0] for row in lines}
    kept = sorted(i for i, w in labels.items() if w in order)  # the flat val's images of the subset, in file order
    assert data.test.y.tolist() == [order.index(labels[i]) for i in kept]


def test_the_subsets_match_the_fastai_imagenette_list_and_mtts_indices():
    assert [w for _, w in SUBSETS["imagenette"]] == FASTAI_IMAGENETTE
    assert [i for i, _ in SUBSETS["imagenette"]] == [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]
    assert SUBSETS["imageyellow"][2][1] == SUBSETS["imagefruit"][1][1] == "n07753592"  # banana, index 954 in both
    assert SUBSETS["imageyellow"][7][1] == SUBSETS["imagemeow"][5][1] == "n02129165"  # lion, index 291


def test_imagenette_reads_its_own_archive_layout(manager, root):
    _, data = load(manager, "imagenette", root, source="imagenette")
    assert len(data.test) == 20 and sorted(set(data.test.y.tolist())) == list(range(10))
    _, from_imagenet = load(manager, "imagenette", root)
    assert not torch.equal(data.test.x[:10], from_imagenet.test.x)  # another source, other images


def test_splits_are_seeded_stable_and_the_cache_is_reused(manager, root):
    cache = root / "cifar-10-batches-py" / ".ddbench-cache"
    _, a = load(manager, "cifar10", root)
    built = sorted(cache.iterdir())
    _, b = load(manager, "cifar10", root)
    _, c = load(manager, "cifar10", root, seed=1)
    assert sorted(cache.iterdir()) == built and len(built) == 1  # one decoded cache, read again
    assert json.loads((built[0] / "info.json").read_text())["splits"] == {"train": 60, "test": 30}
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert not torch.equal(a.val.x, c.val.x) and torch.equal(a.test.x, c.test.x)
    batches = [pickle.loads((root / "cifar-10-batches-py" / f"data_batch_{i}").read_bytes(), encoding="latin1") for i in range(1, 6)]
    x = torch.from_numpy(np.concatenate([b["data"] for b in batches])).view(-1, 3, 32, 32)
    y = torch.tensor([label for b in batches for label in b["labels"]])
    rest, held = stratified_indices(y, 0.1, 0)
    assert torch.equal(a.train.x, x[rest]) and torch.equal(a.val.x, x[held]) and torch.equal(a.train.y, y[rest])


def test_a_changed_source_file_builds_a_new_cache(manager, tmp_path):
    write_cifar10(tmp_path, 12, 10)
    load(manager, "cifar10", tmp_path)
    write_cifar10(tmp_path, 12, 10, seed=5)
    _, data = load(manager, "cifar10", tmp_path)
    assert len(list((tmp_path / "cifar-10-batches-py" / ".ddbench-cache").iterdir())) == 2
    reference = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes(), encoding="latin1")
    assert torch.equal(data.test.x.flatten(1), torch.from_numpy(reference["data"]))


# -- one line and exit 2 ---------------------------------------------------------------------
def run_cli(root: Path, task: str, store: Path, *more: str) -> int:
    return main(["run", "--task", task, "--distiller", "random", "--budget", "ipc=1", "--data-root", str(root),
                 "--store", str(store), *more])


def damage_truncated_idx(root: Path) -> str:
    write_idx_set(root / "mnist", 20, 10, gz=False)
    path = root / "mnist" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    return "mnist"


def damage_wrong_magic(root: Path) -> str:
    write_idx_set(root / "mnist", 20, 10, gz=True)
    labels = np.arange(20, dtype=np.uint8) % 10
    (root / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels, 2051)))
    return "mnist"


def damage_truncated_gzip(root: Path) -> str:
    write_idx_set(root / "mnist", 20, 10, gz=True)
    path = root / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50])
    return "mnist"


def damage_foreign_global(root: Path) -> str:
    folder = write_cifar10(root, 12, 10)
    honest = py2_pickle({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]})
    # the same dict whose labels are built by os.system('true'): a global no CIFAR file holds
    evil = honest[:-2] + b"U\x06labelscos\nsystem\n(U\x04truetR" + b"u."
    (folder / "data_batch_3").write_bytes(evil)
    return "cifar10"


def damage_missing_class_folder(root: Path) -> str:
    write_tiny_imagenet(root, 2, 1)
    import shutil
    shutil.rmtree(root / "tiny-imagenet-200" / "train" / wnids(200)[7])
    return "tiny-imagenet"


def damage_missing_subset_class(root: Path) -> str:
    write_imagenet(root / "imagenet", [w for w in SUBSET_WNIDS if w != SUBSETS["imagewoof"][3][1]], 2, 1, flat_val=False)
    return "imagewoof"


def damage_truncated_jpeg(root: Path) -> str:
    write_imagenet(root / "imagenet", FASTAI_IMAGENETTE, 2, 1, flat_val=False)
    path = root / "imagenet" / "train" / FASTAI_IMAGENETTE[4] / f"{FASTAI_IMAGENETTE[4]}_1.JPEG"
    path.write_bytes(path.read_bytes()[:60])
    return "imagenette"


@pytest.mark.parametrize("damage, words", [
    (damage_truncated_idx, ["train-images-idx3-ubyte", "truncated"]),
    (damage_wrong_magic, ["train-labels-idx1-ubyte.gz", "magic number 2051, not 2049"]),
    (damage_truncated_gzip, ["t10k-images-idx3-ubyte.gz", "truncated"]),
    (damage_foreign_global, ["data_batch_3", "global os.system", "refused"]),
    (damage_missing_class_folder, ["tiny-imagenet-200 has no train/n10000259/images"]),
    (damage_missing_subset_class, ["no class folder n02088364", "imagewoof"]),
    (damage_truncated_jpeg, ["n03028079_1.JPEG", "not a readable image"]),
])
def test_a_damaged_dataset_is_one_line_and_exit_2_before_any_cell(tmp_path, capsys, damage, words):
    name = damage(tmp_path / "data")
    assert run_cli(tmp_path / "data", name, tmp_path / "r.sqlite") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[-1].startswith("ddbench: error: ") and all(w in err[-1] for w in words), err
    assert not any("Traceback" in line for line in err)
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "data").rglob("*"))  # no half-built cache left behind
    assert os.environ.get("DDBENCH_DATA_ROOT") != str(tmp_path / "data")  # --data-root ends with its command


def test_absent_files_name_the_files_and_the_folder(manager, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DDBENCH_DOWNLOAD", raising=False)
    assert run_cli(tmp_path, "cifar10", tmp_path / "r.sqlite") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "data_batch_1" in err and str(tmp_path / "cifar-10-batches-py") in err and "--download" in err
    with pytest.raises(TaskDataError, match="no public download") as info:
        instantiate(manager.tasks.get("imagenet"), {"root": str(tmp_path), "download": True}).load()
    assert "\n" not in str(info.value)


# -- downloads -------------------------------------------------------------------------------
class RangeServer(http.server.ThreadingHTTPServer):
    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files, self.ranges = files, []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``, honouring ``Range: bytes=N-`` with 206 as a download server does."""

    server: RangeServer

    def do_GET(self) -> None:
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        asked = self.headers.get("Range")
        self.server.ranges.append(asked)
        start = int(asked.split("=")[1].split("-")[0]) if asked else 0
        self.send_response(206 if asked else 200)
        if asked:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[RangeServer]:
    srv = RangeServer({})
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def md5(data: bytes) -> str:
    import hashlib
    return hashlib.md5(data).hexdigest()


def test_a_partial_download_resumes_with_a_range_request_and_is_checked(server, tmp_path):
    data = bytes(range(256)) * 400
    server.files["/set/file.bin"] = data
    (tmp_path / "file.bin.part").write_bytes(data[:30_000])
    path = fetch(Archive(f"{server.url}/set/file.bin", md5(data)), tmp_path)
    assert path.read_bytes() == data and server.ranges == ["bytes=30000-"]
    assert not (tmp_path / "file.bin.part").exists()
    assert fetch(Archive(f"{server.url}/set/file.bin", md5(data)), tmp_path) == path and len(server.ranges) == 1  # kept: checksum matches


def test_a_wrong_checksum_deletes_the_download(server, tmp_path):
    server.files["/f.gz"] = b"not what was published"
    with pytest.raises(TaskDataError, match="f.gz .* has md5 .*, not the published 0123.*deleted") as info:
        fetch(Archive(f"{server.url}/f.gz", "0123"), tmp_path)
    assert "\n" not in str(info.value) and not list(tmp_path.iterdir())


def test_offline_names_the_file_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "TIMEOUT_S", 2)
    with pytest.raises(TaskDataError) as info:
        fetch(Archive("http://127.0.0.1:9/mnist/train-images-idx3-ubyte.gz", "00"), tmp_path / "MNIST" / "raw")
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and f"in {tmp_path / 'MNIST' / 'raw'} by hand" in message and "\n" not in message


def test_download_fetches_the_official_files_into_torchvisions_layout(server, tmp_path, monkeypatch, manager):
    write_idx_set(tmp_path / "src", 30, 10, gz=True)
    archives = []
    for path in sorted((tmp_path / "src").iterdir()):
        server.files[f"/mnist/{path.name}"] = path.read_bytes()
        archives.append(Archive(f"{server.url}/mnist/{path.name}", md5(path.read_bytes())))
    monkeypatch.setattr(Mnist, "archives", tuple(archives))
    _, data = load(manager, "mnist", tmp_path / "root", download=True)
    assert len(data.test) == 10 and (tmp_path / "root" / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").is_file()


def test_an_archive_member_outside_the_folder_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    (tmp_path / "a.tar.gz").write_bytes(buffer.getvalue())
    with pytest.raises(TaskDataError, match="would land outside"):
        download.unpack(tmp_path / "a.tar.gz", tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


# -- memory-mapped ImageNet-1K ----------------------------------------------------------------
def test_a_mapped_split_reads_rows_normalised_and_refuses_the_whole_tensor(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (12, 3, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    split = MappedSplit(tmp_path / "x.npy", torch.tensor([5, 1, 9, 3]), torch.tensor([0, 1, 0, 1]), (0.5, 0.4, 0.3), (0.2, 0.2, 0.1))
    got = split.take(torch.tensor([2, 0, 2]))
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.2, 0.1]).view(1, 3, 1, 1)
    assert torch.allclose(got, (torch.from_numpy(images[[9, 5, 9]]).float() / 255 - mean) / std)
    assert [len(x) for x, _ in split.batches(3)] == [3, 1] and len(split.subset(torch.tensor([1, 3]))) == 2
    with pytest.raises(TaskDataError, match="memory-mapped .* never one tensor") as info:
        _ = split.x
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_imagenet_is_memory_mapped_and_its_view_file_holds_no_images(manager, imagenet_root, tmp_path):
    task, data = load(manager, "imagenet", imagenet_root)
    assert all(s.mapped for s in (data.train, data.val, data.test)) and task.input_shape == (3, 64, 64)
    assert len(data.train) + len(data.val) == 2000 and len(data.test) == 1000 and len(data.val) == 1000
    assert sorted(data.test.y.tolist()) == list(range(1000))
    view = task_view(task, data, "cpu")
    spec = worker.write_view(view, tmp_path / "view.safetensors")
    assert (tmp_path / "view.safetensors").stat().st_size < 100_000  # rows and labels only
    again = worker.read_view(spec, torch.device("cpu"))
    assert again.train.mapped and torch.equal(again.train.take(torch.arange(4)), view.train.take(torch.arange(4)))
    batch = again.balanced_batch(1, torch.Generator().manual_seed(0))
    assert batch.y.tolist() == list(range(1000)) and tuple(batch.x.shape) == (1000, 3, 64, 64)
    dm, random = manager.distillers.get("dm"), manager.distillers.get("random")
    assert "memory-mapped" in worker.mapped_reason(dm, view) and worker.mapped_reason(random, view) is None
    with pytest.raises(DDBenchError, match="unknown res 96: use one of 64, 128, 224"):
        instantiate(manager.tasks.get("imagenet"), {"res": 96})


# -- the ImageNet-form ResNet and a teacher from a weights file ---------------------------------
def imagenet_view(classes: int = 1000, side: int = 224) -> TaskView:
    empty = Split(torch.zeros(0, 3, side, side), torch.zeros(0, dtype=torch.long))
    return TaskView("t", "classification", classes, (3, side, side), empty, empty)


@pytest.mark.parametrize("depth, params", [(18, 11_689_512), (50, 25_557_032)])
def test_imagenet_resnet_has_torchvisions_sizes_and_names(depth, params):
    model = ImageNetResNet((3, 224, 224), 1000, depth)
    assert sum(p.numel() for p in model.parameters()) == params  # torchvision's resnet18 / resnet50
    names = model.state_dict().keys()
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.num_batches_tracked", "fc.weight", "fc.bias"} <= names
    assert ("layer4.2.conv3.weight" in names) == (depth == 50) and len(names) == (122 if depth == 18 else 320)


def test_a_teacher_loads_from_a_weights_file_with_names_and_shapes_checked(manager, tmp_path):
    from ddbench.ops.teacher import weights_teacher

    spec = "resnet-imagenet:depth=18,width=8"
    x = torch.randn(6, 3, 32, 32)
    view = TaskView("t", "classification", 10, (3, 32, 32), Split(x, torch.arange(6) % 10), Split(x, torch.arange(6) % 10))
    source = ImageNetResNet((3, 32, 32), 10, 18, 8)
    torch.save(source.state_dict(), tmp_path / "teacher.pth")
    context = RunContext(torch.device("cpu"), 0, torch.Generator())
    model, meta = weights_teacher(view, spec, str(tmp_path / "teacher.pth"), context)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
    assert meta["teacher_weights"] == str(tmp_path / "teacher.pth") and 0 <= meta["teacher_val_accuracy"] <= 100
    torch.save(ImageNetResNet((3, 32, 32), 7, 18, 8).state_dict(), tmp_path / "other.pth")
    with pytest.raises(DDBenchError, match=r"fc.weight has shape \(7, 64\).* needs \(10, 64\)"):
        weights_teacher(view, spec, str(tmp_path / "other.pth"), context)
    torch.save({"model": source.state_dict(), "note": Path("x")}, tmp_path / "pickled.pth")
    with pytest.raises(DDBenchError, match="not a weights-only torch file") as info:
        weights_teacher(view, spec, str(tmp_path / "pickled.pth"), context)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_a_weights_file_teacher_is_stored_and_charged(root, tmp_path):
    """A cell through the CLI (5-8 s), on one torch thread (tiny ops)."""
    torch.set_num_threads(1)
    weights = tmp_path / "teacher.pth"
    torch.save(ImageNetResNet((3, 32, 32), 10, 18, 4).state_dict(), weights)
    suite = tmp_path / "suite.toml"
    suite.write_text(f"""eval_seeds = 1
[[task]]
name = "cifar10"
options = {{epochs = 1, root = "{root}"}}
budgets = ["ipc=1"]
[[distiller]]
name = "random"
options = {{labels = "teacher", teacher = "resnet-imagenet:depth=18,width=4", teacher_weights = "{weights}"}}
""")
    store = tmp_path / "r.sqlite"
    assert main(["run", "--suite", str(suite), "--store", str(store)]) == 0
    result = json.loads(sqlite3.connect(store).execute("select result from cells").fetchone()[0])
    teacher = sum(t.numel() for t in ImageNetResNet((3, 32, 32), 10, 18, 4).state_dict().values())
    assert result["status"] == "ok" and result["regime"] == "teacher"
    assert result["stored_params"] == 10 * 3 * 32 * 32 + teacher  # the images and every teacher tensor, as any teacher


# -- ddbench run on every task ----------------------------------------------------------------
FILE_TASKS = ["mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", "tiny-imagenet", *sorted(SUBSETS)]


@pytest.mark.slow
def test_ddbench_run_scores_random_and_dm_on_every_task(root, imagenet_root, tmp_path):
    """Every file task and ImageNet-1K at 64 px through the CLI, on one torch thread: tiny ops, which
    a second thread of a busy 2-core machine slows by an order of magnitude (tests/conftest.py)."""
    torch.set_num_threads(1)
    tasks = [f"{t}:epochs=1" for t in FILE_TASKS] + [f"imagenet:res=64,epochs=1,root={imagenet_root}"]
    store = tmp_path / "r.sqlite"
    args = ["run", *[a for t in tasks for a in ("--task", t)], "--distiller", "random", "--distiller", "dm:iterations=1",
            "--budget", "ipc=1", "--seeds", "1", "--learner", "convnet:width=8", "--data-root", str(root), "--store", str(store)]
    assert main(args) == 0
    rows = {(r[0], r[1]): (r[2], json.loads(r[3])) for r in sqlite3.connect(store).execute("select task, distiller, status, result from cells")}
    for task in [*FILE_TASKS, "imagenet"]:
        status, result = rows[(task, "random")]
        assert status == "ok" and all(0 <= v <= 100 for v in result["values"]), (task, result.get("error"))
    for task in FILE_TASKS:
        assert rows[(task, "dm")][0] == "ok", (task, rows[(task, "dm")][1].get("error"))
    status, result = rows[("imagenet", "dm")]
    assert status == "skipped" and "memory-mapped" in result["error"]
