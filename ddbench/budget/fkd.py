"""SRe2L's FKD soft-label files read into a soft-label bank (:mod:`ddbench.budget.labels`, docs/import.md).

SRe2L's ``relabel/generate_soft_label.py`` writes, per epoch ``e`` and batch ``b``,
``epoch_<e>/batch_<b>.tar``: ``torch.save([coords, flip, mix_index, mix_lam, mix_bbox, output])``,
where ``coords`` (B, 4) are each view's RandomResizedCrop as fractions (top, left, height,
width), ``flip`` its horizontal flip, and ``output`` the teacher's logits (fp16 with
``--use-fp16``). Which image a row belongs to is not stored: the images were drawn by a
``RandomSampler`` over the class-sorted image folder with a generator seeded ``--fkd-seed``
(42 in the official script), continued from epoch to epoch, and :func:`read_fkd` replays it with
torch's own sampler. A view of ddbench's bank is one image's crop and flip, so files written with
``--mix-type cutmix`` or ``mixup`` (whose logits are those of two images mixed) are refused.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddbench.budget.labels import BANK_LOGITS, BANK_VIEWS, VIEW_FIELDS
from ddbench.budget.safeload import safe_load, sha256
from ddbench.errors import SourceError

EPOCH, BATCH = re.compile(r"epoch_(\d+)"), re.compile(r"batch_(\d+)\.tar")


def _numbered(folder: Path, pattern: re.Pattern[str], what: str) -> list[Path]:
    """The entries of ``folder`` named by ``pattern``, in number order, numbered 0, 1, ... without gaps."""
    found = {int(m.group(1)): p for p in folder.iterdir() if (m := pattern.fullmatch(p.name))}
    if sorted(found) != list(range(len(found))) or not found:
        raise SourceError(f"{str(folder)!r} does not hold {what} numbered 0, 1, ... without gaps (found {len(found)}).")
    return [found[i] for i in range(len(found))]


def read_fkd(folder: Path, n: int, num_classes: int, seed: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The bank (``bank.logits`` (n, E, C), ``bank.views`` (n, E, 5)) of FKD files for ``n``
    images over E epochs, and the facts of the files (their sha256 under ``files``)."""
    from torch.utils.data import RandomSampler

    if not folder.is_dir():
        raise SourceError(f"--soft-labels {str(folder)!r} is not a folder of epoch_<e>/batch_<b>.tar files.")
    epochs = _numbered(folder, EPOCH, "epoch_<e> folders")
    sampler = RandomSampler(range(n), generator=torch.Generator().manual_seed(seed))
    logits = torch.zeros(n, len(epochs), num_classes)
    views = torch.zeros(n, len(epochs), VIEW_FIELDS)
    files: dict[str, str] = {}
    for e, epoch in enumerate(epochs):
        order = torch.tensor(list(iter(sampler)), dtype=torch.int64)
        at = 0
        for batch in _numbered(epoch, BATCH, "batch_<b>.tar files"):
            name = f"{epoch.name}/{batch.name}"
            saved = safe_load(batch, numbers=True)
            if not isinstance(saved, list) or len(saved) != 6:
                raise SourceError(f"{name} is not an FKD batch [coords, flip, mix_index, mix_lam, mix_bbox, output].")
            coords, flip, mix_index, _, _, output = saved
            if mix_index is not None:
                raise SourceError(f"{name} was written with cutmix or mixup (its logits are of two images mixed): a bank holds one "
                                  "image's views; relabel with --mix-type None, or import the teacher with --teacher.")
            if not all(isinstance(t, Tensor) for t in (coords, flip, output)):
                raise SourceError(f"{name} does not hold tensors of crops, flips and logits.")
            b = len(output)
            if tuple(coords.shape) != (b, 4) or flip.numel() != b or tuple(output.shape) != (b, num_classes):
                raise SourceError(f"{name} holds logits {tuple(output.shape)} and crops {tuple(coords.shape)}: expected (B, "
                                  f"{num_classes}) and (B, 4) for the task's {num_classes} classes.")
            if at + b > n:
                raise SourceError(f"{epoch.name} holds more views than the {n} images imported: the FKD files belong to another set.")
            rows = order[at:at + b]
            logits[rows, e] = output.float()
            views[rows, e] = torch.cat([coords.float(), flip.float().reshape(b, 1)], 1)
            at += b
            files[name] = sha256(batch)
        if at != n:
            raise SourceError(f"{epoch.name} holds {at} views for {n} images: the FKD files belong to another set.")
    facts = {"epochs": len(epochs), "seed": seed, "files": files}
    return {BANK_LOGITS: logits, BANK_VIEWS: views}, facts
