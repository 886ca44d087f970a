"""Teachers for the label regimes (docs/labels.md): a learner trained on the train split, SRe2L's
"squeeze" step, cached on disk like MTT's experts, so that every distiller that asks for the same
teacher on the same data (sre2l, dwa, random and herding in the teacher regime) gets the same one.

The cache folder ``<cache_dir>/teachers/<key>`` holds ``teacher.safetensors`` (the state_dict) and
``info.json``; ``key`` hashes the task (name, options, a fingerprint of its train split), the
teacher spec, the training recipe, the seed and how training draws its randomness (``DRAWS``).
The teacher never reaches a student from here: a distiller stores it in its artifact
(:func:`ddbench.budget.labels.teacher_tensors`), where the harness counts it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ddbench.budget.labels import installed, logits, skeleton, teacher_learner
from ddbench.contracts.interfaces import Artifact, RunContext, TaskView
from ddbench.contracts.recipe import Recipe, crop_protocol
from ddbench.ops.cache import cache_key, fingerprint
from ddbench.ops.steps import DRAWS

CACHE_FOLDER = "teachers"
TEACHER = "resnet:depth=18,width=64"  # the published teacher: ResNet-18 in CIFAR form
SQUEEZE_EPOCHS = 200  # the official squeeze_cifar.sh (SRe2L) and squeeze.sh (DWA)
SQUEEZE_AUGMENTS = ("crop", "dsa", "none")
"""How a teacher's training augments: ``crop`` (the official padded random crop and flip), ``dsa`` or ``none``."""
QUICK_TEACHER = {"teacher": "resnet:depth=18,width=16", "squeeze_epochs": 10}
"""The teacher options of the ``quick`` profile, shared by every distiller that squeezes one, so
that they all get the same cached teacher."""
TEACHER_SEED = 2_000_000  # the teacher is built and trained from this seed (apart from eval and expert seeds)


def squeeze_recipe(task: TaskView, epochs: int, augment: str) -> Recipe:
    """How a teacher trains (docs/labels.md §5): the official ``squeeze_cifar.py`` recipe, SGD lr 0.1,
    momentum 0.9, weight decay 5e-4, cosine schedule, batch 128, for ``epochs`` E, augmented by
    ``augment``: ``crop`` (the official padded random crop and flip, :func:`ddbench.contracts.recipe.crop_protocol`),
    ``dsa`` with the task's strategy, or ``none``."""
    strategy = task.info.get("dsa_strategy") or "color_crop_cutout_flip_scale_rotate"
    fields = crop_protocol(task.info, task.input_shape) if augment == "crop" else {"augment": augment}
    return Recipe(epochs=epochs, lr=0.1, batch_size=128, schedule="cosine", dsa_strategy=strategy).updated(fields)


def teacher_for(task: TaskView, spec: str, epochs: int, augment: str, context: RunContext) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`squeeze_teacher` for ``epochs`` epochs with ``augment`` (:func:`squeeze_recipe`), frozen."""
    model, meta = squeeze_teacher(task, spec, squeeze_recipe(task, epochs - 1, augment), context)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, meta


def squeeze_teacher(task: TaskView, spec: str, recipe: Recipe, context: RunContext) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher ``spec`` (a learner spec, e.g. ``resnet:depth=18,width=16``) trained on ``task``'s
    train split with ``recipe``, from the cache or trained and cached; in eval mode on the device.
    Returns it and facts for the artifact's meta (validation accuracy, whether it was trained now)."""
    learners = installed(None)
    config, key = cache_key({"task": task.name, "task_options": task.options, "train": fingerprint(task.train),
                             "teacher": spec, "recipe": recipe.as_dict(), "seed": TEACHER_SEED, "draws": DRAWS})
    folder = Path(context.cache_dir) / CACHE_FOLDER / key
    trained_now = not (folder / "teacher.safetensors").is_file()
    if trained_now:
        start = time.perf_counter()
        learner = teacher_learner(spec, learners)
        model = learner.build(task, TEACHER_SEED).to(context.device)
        generator = torch.Generator(context.device).manual_seed(TEACHER_SEED)
        learner.fit(model, Artifact({"x": task.train.x, "y": task.train.y}), recipe, generator)
        model.eval()
        val = 100.0 * float((logits(model, task.val.x).argmax(1) == task.val.y).float().mean())
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"teacher.{os.getpid()}.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
        tmp.replace(folder / "teacher.safetensors")
        info = {"config": config, "val_accuracy": val, "train_s": time.perf_counter() - start}
        tmp = folder / f"info.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        tmp.replace(folder / "info.json")
    else:
        model = skeleton(spec, task, learners)
        model.load_state_dict(load_file(str(folder / "teacher.safetensors")))
        model = model.to(context.device)
    info = json.loads((folder / "info.json").read_text())
    return model.eval(), {"teacher": spec, "teacher_cache": str(folder), "teacher_trained": trained_now,
                          "teacher_val_accuracy": info["val_accuracy"], "teacher_train_s": info["train_s"]}
