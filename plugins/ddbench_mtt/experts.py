"""The expert buffer of MTT (``docs/methods.md`` §7), trained together and cached on disk.

Experts are trained K at a time by the shared vmapped ensemble engine
(:func:`ddbench.ops.ensemble.train_ensemble`), each with its own init, shuffle and DSA stream.

Experts train on the real train split with plain SGD (lr 0.01, no momentum, no weight decay,
batch 256, no decay) and per-sample DSA, and the flat parameter vector is kept at initialisation
and after every epoch. Only the epochs a distillation can use (T+ + M) are trained and stored.

Cache: ``<cache_dir>/mtt-experts/<key>/`` holds one safetensors file per expert and a
``manifest.json``. ``key`` hashes the task (name, options, a fingerprint of its train split), the
learner (name, options, parameter layout), the expert recipe and how training draws its randomness
(``DRAWS``); the manifest maps each expert seed to its file and stored epochs. A present expert with enough epochs is never recomputed.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.func import vmap

from ddbench.contracts.interfaces import Learner, Split, TaskView
from ddbench.contracts.recipe import Recipe
from ddbench.errors import DDBenchWarning
from ddbench.ops.cache import cache_key, fingerprint
from ddbench.ops.ensemble import flat_parameters, stack_parameters, train_ensemble
from ddbench.ops.steps import DRAWS
from ddbench_mtt.flat import FlatModel

EXPERT_SEED = 1_000_000  # expert i is built and shuffled from seed EXPERT_SEED + i (apart from eval seeds)
CACHE_FOLDER = "mtt-experts"


@dataclass(frozen=True)
class ExpertRecipe:
    """How experts train (§7): SGD ``lr``, ``batch_size``, per-sample DSA with ``dsa_strategy``."""

    lr: float = 0.01
    batch_size: int = 256
    dsa_strategy: str | None = None


def train_experts(models: Sequence[nn.Module], train: Split, epochs: int, recipe: ExpertRecipe, seeds: Sequence[int],
                  on_epoch: Callable[[int], None] | None = None) -> Tensor:
    """Train K experts together with the shared ensemble engine; returns (K, epochs + 1, P).

    Expert k starts from ``models[k]`` (on ``train``'s device) and draws its shuffle and DSA stream
    from a generator seeded with ``seeds[k]``. The flat vectors follow ``named_parameters`` order,
    as :class:`~ddbench_mtt.flat.FlatModel` does. ``on_epoch(epoch)`` is called after every epoch
    (1..``epochs``).
    """
    device = train.x.device
    generators = [torch.Generator(device).manual_seed(s) for s in seeds]
    plan = Recipe(epochs=epochs - 1, lr=recipe.lr, momentum=0.0, weight_decay=0.0, batch_size=recipe.batch_size,
                  augment="dsa" if recipe.dsa_strategy else "none", dsa_strategy=recipe.dsa_strategy or Recipe.dsa_strategy)
    snapshots = [flat_parameters(stack_parameters(models))]

    def keep(epoch: int, params: dict[str, Tensor]) -> None:
        snapshots.append(flat_parameters(params))  # a new tensor (torch.cat), not a view of the live parameters
        if on_epoch is not None:
            on_epoch(epoch + 1)

    if epochs > 0:
        train_ensemble(models, train.x, train.y, plan, generators, lr_decay=False, on_epoch=keep)
    return torch.stack(snapshots, 1)


def accuracy(model: FlatModel, flats: Tensor, split: Split, chunk: int = 1024) -> Tensor:
    """Accuracy (%) of each of the K flat vectors ``flats`` on ``split`` (vmapped)."""
    forward = vmap(model, in_dims=(0, None))
    correct = torch.zeros(len(flats), device=flats.device)
    with torch.no_grad():
        for i in range(0, len(split), chunk):
            pred = forward(flats, split.x[i : i + chunk]).argmax(-1)
            correct += (pred == split.y[i : i + chunk]).sum(1)
    return 100.0 * correct / max(len(split), 1)


class ExpertCache:
    """One cache folder per configuration: expert files and a manifest (see the module doc).

    The cache is data read back from disk, so it is checked: an unreadable manifest, an entry that
    names a file outside this folder or a non-integer number of epochs, and an expert file that
    does not hold the trajectory it should are ignored with a one-line warning, and those experts
    are trained again (and the manifest rewritten)."""

    def __init__(self, root: Path, config: dict[str, Any]):
        self.config, self.key = cache_key(config)
        self.folder = Path(root) / CACHE_FOLDER / self.key
        self.manifest_path = self.folder / "manifest.json"

    def manifest(self) -> dict[str, Any]:
        """The manifest on disk, or an empty one where there is none or it is not a manifest (warned)."""
        fresh: dict[str, Any] = {"config": self.config, "experts": {}}
        if not self.manifest_path.is_file():
            return fresh
        try:
            manifest = json.loads(self.manifest_path.read_bytes().decode("utf-8"))
        except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            self._warn(f"is unreadable ({type(exc).__name__}): its experts are trained again and it is rewritten")
            return fresh
        if not isinstance(manifest, dict) or not isinstance(manifest.get("experts"), dict):
            self._warn("is not an expert manifest (no 'experts' table): its experts are trained again and it is rewritten")
            return fresh
        return manifest

    def entry(self, seed: int) -> dict[str, Any] | None:
        """Expert ``seed``'s manifest entry, or None where it has none or a malformed one (warned)."""
        entry = self.manifest()["experts"].get(str(seed))
        if entry is None:
            return None
        problem = entry_problem(entry)
        if problem:
            self._warn(f"has an entry for expert {seed} that {problem}: it is ignored and the expert trained again")
            return None
        return entry

    def load(self, seed: int, epochs: int, size: int) -> Tensor | None:
        """The first ``epochs + 1`` snapshots of expert ``seed`` (``size`` parameters each), or None if
        not cached with enough epochs."""
        entry = self.entry(seed)
        if entry is None or entry["epochs"] < epochs or not (self.folder / entry["file"]).is_file():
            return None
        try:
            trajectory = load_file(str(self.folder / entry["file"])).get("trajectory")
        except (SafetensorError, OSError, ValueError) as exc:
            self._warn(f"names {entry['file']!r} for expert {seed}, which is not a safetensors file ({exc}): the expert is trained again")
            return None
        if trajectory is None or trajectory.dim() != 2 or len(trajectory) < epochs + 1 or trajectory.shape[1] != size:
            shape = None if trajectory is None else tuple(trajectory.shape)
            self._warn(f"names {entry['file']!r} for expert {seed}, whose trajectory {shape} is not ({epochs + 1}+, {size}): "
                       "the expert is trained again")
            return None
        return trajectory[: epochs + 1]

    def _warn(self, what: str) -> None:
        warnings.warn(DDBenchWarning(f"MTT expert cache manifest {str(self.manifest_path)!r} {what}."), stacklevel=3)

    def save(self, seed: int, trajectory: Tensor, info: dict[str, Any]) -> None:
        """Write one expert's (epochs + 1, P) trajectory and record it in the manifest (atomically)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        epochs = len(trajectory) - 1
        name = f"expert-{seed}-e{epochs}.safetensors"
        save_file({"trajectory": trajectory.detach().cpu().contiguous()}, str(self.folder / name),
                  metadata={"seed": str(seed), "epochs": str(epochs)})
        manifest = self.manifest()
        manifest["experts"][str(seed)] = {"file": name, "epochs": epochs, **info}
        tmp = self.manifest_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.manifest_path)


StartFn = Callable[[Sequence[nn.Module], Sequence[int]], None]
"""``start(models, seeds)``: moves freshly built experts to where their trajectories begin (in place)."""


def expert_buffer(task: TaskView, learner: Learner, model: FlatModel, count: int, epochs: int, recipe: ExpertRecipe,
                  group: int, cache_root: Path, device: torch.device,
                  on_epoch: Callable[[int, int], None] | None = None, start: StartFn | None = None,
                  start_key: dict[str, Any] | None = None) -> tuple[Tensor, dict[str, Any]]:
    """The (count, epochs + 1, P) trajectories of experts ``0..count-1`` on ``device``, loaded from
    the cache or trained ``group`` at a time (:func:`train_experts`) and cached. ``on_epoch(done,
    total)`` reports training progress in expert-epochs. ``start``: experts begin where it puts the
    freshly built nets (SeqMatch: trained on the earlier subsets) instead of at their init;
    ``start_key`` says what it depends on and keys the cache. Returns the buffer and facts for the artifact's meta."""
    config = {
        "task": task.name, "task_options": task.options, "train": fingerprint(task.train),
        "learner": learner.name, "learner_options": vars(learner), "layout": list(zip(model.names, model.shapes)),
        "recipe": asdict(recipe), "draws": DRAWS,
    }
    if start_key is not None:
        config["start"] = start_key
    cache = ExpertCache(cache_root, config)
    seeds = [EXPERT_SEED + i for i in range(count)]
    found = {s: cache.load(s, epochs, sum(model.numels)) for s in seeds}
    missing = [s for s in seeds if found[s] is None]
    total = len(missing) * epochs
    for first in range(0, len(missing), group):
        batch = missing[first : first + group]
        models = [learner.build(task, s).to(device) for s in batch]
        if start is not None:
            start(models, batch)
        report = None if on_epoch is None else (
            lambda epoch, done=first * epochs, n=len(batch): on_epoch(done + epoch * n, total))  # noqa: B008 - binds this batch's numbers
        trajectories = train_experts(models, task.train, epochs, recipe, batch, report)
        val = accuracy(model, trajectories[:, -1], task.val).tolist()
        for s, trajectory, acc in zip(batch, trajectories, val):
            cache.save(s, trajectory, {"val_accuracy": acc})
            found[s] = trajectory
    buffer = torch.stack([found[s].to(device) for s in seeds])  # type: ignore[union-attr]  # every missing seed was trained above
    val_acc = [entry["val_accuracy"] for entry in map(cache.entry, seeds) if entry is not None]
    return buffer, {"expert_cache": str(cache.folder), "experts_trained": len(missing), "experts": count,
                    "expert_epochs_stored": epochs, "expert_val_accuracy": sum(val_acc) / len(val_acc) if val_acc else math.nan}


def entry_problem(entry: Any) -> str:
    """What is wrong with one expert's manifest entry ('' when nothing): its file must be a
    ``.safetensors`` file of the cache folder itself (no path), its epochs a whole number and its
    validation accuracy a number."""
    if not isinstance(entry, dict):
        return f"is a {type(entry).__name__}, not a table"
    name = entry.get("file")
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..") or not name.endswith(".safetensors"):
        return f"names file {name!r}, which is not a .safetensors file of the cache folder"
    epochs = entry.get("epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        return f"has epochs = {epochs!r}, not a whole number"
    accuracy = entry.get("val_accuracy")
    if not isinstance(accuracy, (int, float)) or isinstance(accuracy, bool) or not math.isfinite(accuracy):
        return f"has val_accuracy = {accuracy!r}, not a number"
    return ""
