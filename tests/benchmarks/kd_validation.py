"""How the quick profile's student recipe of the teacher regime was chosen (docs/labels.md §3):
validation accuracy of random real images at ipc 10 distilled from the quick teacher (ResNet-18,
width 16, 10 epochs), under the official recipe with the rows' changes, two subsets x two
evaluation nets, one thread. Only the validation split is read (the view is loaded without its
test split).

    python tests/benchmarks/kd_validation.py [digits|mnist5k]    # digits: about 10 minutes on a loaded 2-core box
"""
from __future__ import annotations

import statistics
import sys
import tempfile
from typing import Any

import torch

from ddbench.budget.artifact import with_labels
from ddbench.budget.labels import teacher_tensors, with_teacher
from ddbench.contracts.interfaces import Artifact, RunContext
from ddbench.ops.subsets import random_artifact
from ddbench.ops.teacher import squeeze_recipe, squeeze_teacher
from ddbench.plugins import get_plugin_manager, instantiate
from ddbench.run.suite import load_view
from ddbench.vocab import Budget

TEACHER = "resnet:depth=18,width=16"
ROWS: dict[str, tuple[str, dict[str, Any]]] = {  # name: (the teacher's augmentation, changes to the official recipe)
    "batch 128 (official), teacher without augmentation, E 100": ("none", {"epochs": 100}),
    "batch 128 (official), teacher without augmentation, E 150": ("none", {"epochs": 150}),
    "batch 128, teacher with the crop, E 100": ("crop", {"epochs": 100}),
    "batch 128, teacher with the crop, E 150": ("crop", {"epochs": 150}),
    "batch 32, teacher with the crop, E 100": ("crop", {"epochs": 100, "batch_size": 32}),
    "batch 32, teacher with the crop, E 150": ("crop", {"epochs": 150, "batch_size": 32}),
    "batch 16, teacher with the crop, E 100 (quick default)": ("crop", {"epochs": 100, "batch_size": 16}),
    "batch 16, teacher with the crop, E 150 (quick default)": ("crop", {"epochs": 150, "batch_size": 16}),
    "batch 8, teacher with the crop, E 100": ("crop", {"epochs": 100, "batch_size": 8}),
    "batch 8, teacher with the crop, E 150": ("crop", {"epochs": 150, "batch_size": 8}),
    "batch 32, teacher with the crop, E 100, teacher_mode=eval": ("crop", {"epochs": 100, "batch_size": 32, "teacher_mode": "eval"}),
    "batch 32, teacher with the crop, E 100, no mixup": ("crop", {"epochs": 100, "batch_size": 32, "mixup": 0.0}),
    "batch 128, teacher with the crop, E 399 (the full length)": ("crop", {"epochs": 399}),
}


def main(task_name: str = "digits") -> None:
    torch.set_num_threads(1)
    manager = get_plugin_manager()
    task = instantiate(manager.tasks.get(task_name), {}, "quick")
    view = load_view(manager, task_name, {}, "quick", torch.device("cpu"))
    learner = instantiate(manager.learners.get("convnet"), {}, "quick")
    official = task.teacher_recipe("full")
    cache = tempfile.mkdtemp(prefix="ddbench-kd-validation-")
    for name, (augment, changes) in ROWS.items():
        context = RunContext(torch.device("cpu"), 0, torch.Generator().manual_seed(0), cache_dir=cache)
        teacher, _ = squeeze_teacher(view, TEACHER, squeeze_recipe(view, 9, augment), context)
        accuracies = []
        for subset in (0, 1):
            images = random_artifact(view, Budget.parse("ipc=10"), subset).x
            artifact = Artifact({"x": images, **teacher_tensors(teacher)}, {"teacher": TEACHER, "labels": "class-balanced"})
            artifact = with_labels(with_teacher(artifact, view, manager.learners, "cpu"), view.num_classes)
            models = [learner.build(view, seed) for seed in (0, 1)]
            learner.fit_ensemble(models, artifact, official.updated(changes), [torch.Generator().manual_seed(s) for s in (0, 1)])
            accuracies += [100 * float((learner.predict(m, view.val.x).argmax(1) == view.val.y).float().mean()) for m in models]
        print(f"{name}: val {statistics.fmean(accuracies):.1f} ± {statistics.pstdev(accuracies):.1f}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
