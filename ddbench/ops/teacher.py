"""Teachers for the label regimes (docs/labels.md): a learner trained on the train split, SRe2L's
"squeeze" step, cached on disk like MTT's experts, so that every distiller that asks for the same
teacher on the same data (sre2l, dwa, random and herding in the teacher regime) gets the same one;
or a teacher read from a weights file (:func:`weights_teacher`), as the ImageNet protocol starts
from a published checkpoint.

The cache folder ``<cache_dir>/teachers/<key>`` holds ``teacher.safetensors`` (the state_dict) and
``info.json``; ``key`` hashes the task (name, options, a fingerprint of its train split), the
teacher spec, the training recipe, the seed and how training draws its randomness (``DRAWS``).
The teacher never reaches a student from here: a distiller stores it in its artifact
(:func:`ddbench.budget.labels.teacher_tensors`), where the harness counts it.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ddbench.budget.labels import installed, logits, skeleton, teacher_learner
from ddbench.contracts.interfaces import Artifact, RunContext, TaskView
from ddbench.contracts.recipe import Recipe, crop_protocol
from ddbench.errors import DDBenchError, one_line
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
SQUEEZE_MAPPED = ("squeezing a teacher trains on the whole train split as one tensor, and the task is memory-mapped: "
                  "give teacher_weights=FILE (a checkpoint of the teacher spec, e.g. torchvision's ResNet-18 file with "
                  "teacher=resnet-imagenet:depth=18)")
"""The skip reason of a teacher-based distiller on a memory-mapped task without a weights file."""


def squeeze_recipe(task: TaskView, epochs: int, augment: str) -> Recipe:
    """How a teacher trains (docs/labels.md §5): the official ``squeeze_cifar.py`` recipe, SGD lr 0.1,
    momentum 0.9, weight decay 5e-4, cosine schedule, batch 128, for ``epochs`` E, augmented by
    ``augment``: ``crop`` (the official padded random crop and flip, :func:`ddbench.contracts.recipe.crop_protocol`),
    ``dsa`` with the task's strategy, or ``none``."""
    strategy = task.info.get("dsa_strategy") or "color_crop_cutout_flip_scale_rotate"
    fields = crop_protocol(task.info, task.input_shape) if augment == "crop" else {"augment": augment}
    return Recipe(epochs=epochs, lr=0.1, batch_size=128, schedule="cosine", dsa_strategy=strategy).updated(fields)


def teacher_for(task: TaskView, spec: str, epochs: int, augment: str, context: RunContext,
                weights: str = "") -> tuple[nn.Module, dict[str, Any]]:
    """:func:`squeeze_teacher` for ``epochs`` epochs with ``augment`` (:func:`squeeze_recipe`), or with
    ``weights`` the teacher read from that file (:func:`weights_teacher`); frozen either way."""
    if weights:
        model, meta = weights_teacher(task, spec, weights, context)
    else:
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


def weights_teacher(task: TaskView, spec: str, path: str, context: RunContext) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher ``spec`` with the weights of the checkpoint file ``path`` (a ``state_dict`` saved by
    ``torch.save``, e.g. torchvision's ResNet-18/50 files for ``resnet-imagenet:depth=18``), read with
    ``torch.load(weights_only=True)``, so that the file can hold tensors only and never runs code; every
    name and shape must be the architecture's. In eval mode on the device, with its validation accuracy
    (read a batch at a time) for the artifact's meta. A distiller stores it in its artifact, where
    the harness counts it as any teacher (docs/labels.md)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DDBenchError(f"teacher weights file {str(file)!r} not found: pass teacher_weights=PATH of a state_dict file (.pth).")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise DDBenchError(f"teacher weights {str(file)!r} are not a weights-only torch file ({one_line(exc)}): "
                           "save the teacher's state_dict with torch.save.") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DDBenchError(f"teacher weights {str(file)!r} hold a {type(state).__name__}, not a state_dict of tensors: "
                           "save model.state_dict() with torch.save.")
    model = skeleton(spec, task, installed(None))
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise DDBenchError(f"teacher weights {str(file)!r} do not fit {spec!r}: {len(missing)} tensors missing "
                           f"({', '.join(missing[:3])}) and {len(unexpected)} unexpected ({', '.join(unexpected[:3])}): "
                           "give the file of that architecture, or the spec of this file's.")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise DDBenchError(f"teacher weights {str(file)!r}: {name} has shape {tuple(state[name].shape)}, {spec!r} on task "
                               f"{task.name!r} needs {tuple(tensor.shape)} (classes or depth differ): give a matching file.")
    model.load_state_dict(state)
    model = model.to(context.device).eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in task.val.batches(256))
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    return model, {"teacher": spec, "teacher_weights": str(file), "teacher_sha256": digest, "teacher_trained": False,
                   "teacher_val_accuracy": 100.0 * correct / max(1, len(task.val))}
