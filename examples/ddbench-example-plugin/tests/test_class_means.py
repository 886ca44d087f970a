"""The example plugin's tests: the ddbench conformance kit and what class-means computes."""
from __future__ import annotations

import torch

from ddbench import Budget
from ddbench.testing import check_registered
from ddbench_example.class_means import ClassMeans


def test_conformance(ddbench_check):
    report = ddbench_check(ClassMeans)
    assert {c.task for c in report.cases if c.status == "ok"} == {"tiny-classification"}
    assert [c.note for c in report.cases if c.status == "skipped"] == ["class-means averages within classes; the task is regression"]


def test_registered_through_the_entry_point():
    assert check_registered(ClassMeans) == "example"


def test_one_per_class_stores_the_class_means(ddbench_tiny_classification, ddbench_context):
    task = ddbench_tiny_classification
    artifact = ClassMeans().distill(task, Budget.parse("ipc=1"), None, ddbench_context)
    means = torch.stack([task.train.x[task.class_index(c)].mean(0) for c in range(task.num_classes)])
    torch.testing.assert_close(artifact.x, means)
    assert artifact.y.tolist() == list(range(task.num_classes))


def test_groups_partition_each_class(ddbench_tiny_classification, ddbench_context):
    """With ipc groups, the group means weighted by group size give back the class mean."""
    task = ddbench_tiny_classification
    artifact = ClassMeans().distill(task, Budget.parse("ipc=3"), None, ddbench_context)
    members = task.class_index(0)
    sizes = torch.bincount(torch.arange(len(members)) * 3 // len(members)).to(artifact.x)
    weighted = (artifact.x[artifact.y == 0] * sizes.view(-1, 1, 1, 1)).sum(0) / len(members)
    torch.testing.assert_close(weighted, task.train.x[members].mean(0))
