"""The ``seqmatch`` distiller: sequential subset matching over MTT (Du, Shi & Zhou, NeurIPS 2023).

docs/methods.md §15. The ipc budget is split into K subsets per class, distilled one after another
by MTT's trajectory matching (:meth:`~ddbench_mtt.distiller.MTT.match`): subset k learns its images
and its own step size alpha_k while the student also trains on the frozen subsets 1..k-1, against
experts whose trajectories begin from nets trained on those frozen subsets (stage by stage, with
their learned rates). Stage-k experts are cached keyed by the frozen subsets' content hash.

Each subset runs as its stage of the official run.sh: start epochs uniform on [start, end - M) of
its interval, experts trained to epoch end - 1, alpha_k starting from the subset's own alpha_0, and
student minibatches of classes x ipc_k rows from permutations of the frozen subsets and the new one.

The artifact is staged (ddbench.budget.stages): ``x`` holds the subsets in order (each class-balanced),
``stage.end`` the cumulative row counts and ``stage.lr`` the learned alphas, so evaluation trains
on S1 at alpha_1, then on S1 ∪ S2 at alpha_2, and so on, and the harness counts all of it.
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ddbench.budget.artifact import content_hash, with_labels
from ddbench.budget.stages import stage_tensors
from ddbench.contracts import options
from ddbench.contracts.deviations import Deviation
from ddbench.contracts.interfaces import Artifact, Learner, RunContext, TaskView
from ddbench.contracts.recipe import Recipe
from ddbench.errors import NotApplicable
from ddbench.ops.classifier import fit_classifiers
from ddbench.ops.subsets import random_subset
from ddbench.vocab import Budget
from ddbench_mtt.distiller import EXPERT_ARCH_SEED, MTT
from ddbench_mtt.flat import FlatModel
from ddbench_mtt.presets import CIFAR10, CIFAR100

PUBLISHED_EXAMPLE: dict[str, Any] = {"subsets": 3, "windows": "0-20,0-20,0-10", "lr_inits": "0.001,0.01,0.01",
                                     "lr_img": 100.0, "lr_lr": 1e-5, "syn_steps": 30, "expert_epochs": 2}
"""The official run.sh as options: CIFAR-10 at ipc 50 (17 + 17 + 16 images per class) on the task
with ``zca=true``; on its setting (:data:`EXAMPLE_SETTING`) these are the defaults."""
EXAMPLE_SETTING = ("cifar10", 50, 3)
"""run.sh's (task, ipc, subsets): there the options left unset take :data:`PUBLISHED_EXAMPLE`'s values."""
SEPARATORS = r"[,/]"  # "0-20,0-20,0-10" in a suite; "0-20/0-20/0-10" on the command line, where commas part options
MIN_M = min(row.expert_epochs for table in (CIFAR10, CIFAR100) for row in table.values())


@dataclass(frozen=True)
class Stage:
    """One subset's plan: ``ipc`` new images per class; the official interval ``window`` = (start,
    end), start epochs drawn from [start, end - M) and experts trained to epoch end - 1; its
    alpha_0 ``lr_init``; the student's minibatch ``batch_syn`` (rows of frozen ∪ new)."""

    ipc: int
    window: tuple[int, int]
    lr_init: float
    batch_syn: int


def split_ipc(ipc: int, subsets: int) -> list[int]:
    """``ipc`` images per class in ``subsets`` parts as even as possible, larger parts first (50 -> 17, 17, 16)."""
    base, extra = divmod(ipc, subsets)
    return [base + (1 if k < extra else 0) for k in range(subsets)]


def parse_windows(text: str | None, subsets: int, m: int) -> list[tuple[int, int]] | None:
    """``"0-20,0-20,0-10"`` -> [(0, 20), (0, 20), (0, 10)]: one interval per subset, each holding a
    start epoch in [start, end - ``m``)."""
    if text is None:
        return None
    windows = []
    for part in re.split(SEPARATORS, str(text)):
        bounds = [b.strip() for b in part.split("-")]
        if len(bounds) != 2 or not all(b.isdecimal() for b in bounds):
            raise ValueError(f"windows must be start-end epoch intervals, one per subset, such as '0-20,0-20,0-10' "
                             f"('0-20/0-20/0-10' on the command line), got {text!r}")
        start, end = int(bounds[0]), int(bounds[1])
        if end <= start:
            raise ValueError(f"windows interval {start}-{end} ends before it starts: write start-end with start < end, such as 0-20")
        if end - m <= start:
            raise ValueError(f"windows interval {start}-{end} is too short for expert_epochs={m}: start epochs are drawn "
                             f"from [start, end - {m}), so end must exceed start + {m}")
        windows.append((start, end))
    if len(windows) != subsets:
        raise ValueError(f"windows needs one start-end interval per subset ({subsets}), got {len(windows)} in {text!r}")
    return windows


def parse_lr_inits(value: str | float | None, subsets: int) -> list[float] | None:
    """``"0.001,0.01,0.01"`` -> each subset's alpha_0; one value serves every subset."""
    if value is None:
        return None
    try:
        rates = [float(v) for v in re.split(SEPARATORS, str(value))]
    except ValueError:
        rates = []
    if len(rates) not in (1, subsets) or not all(0 < r < math.inf for r in rates):
        raise ValueError(f"lr_inits must be one positive step size, or one per subset ({subsets}) such as "
                         f"'0.001,0.01,0.01' ('0.001/0.01/0.01' on the command line), got {value!r}")
    return rates * subsets if len(rates) == 1 else rates


class SeqMatch(MTT):
    """K subsets distilled in turn by MTT, evaluated in stages with their learned rates.

    ``subsets``: K (used as min(K, ipc); at ipc 1 the cell is skipped: one stage would be MTT
    itself). ``windows``: each subset's official interval ``start-end`` (start epochs in [start,
    end - M)); unset, ``0-(T+ + M)`` with MTT's T+ (``max_start_epoch``) [ours]. ``lr_inits``: each
    subset's alpha_0 (or one for all); unset, MTT's alpha_0 for every subset [ours]. On run.sh's
    setting (CIFAR-10, ipc 50, K = 3) unset options take its values (:data:`PUBLISHED_EXAMPLE`).
    ``batch_syn``: the student's minibatch; unset, classes x the subset's ipc, as the official code.
    ``prefix_epochs``: E of the training that takes a stage-k expert's initial net through the
    frozen subsets (``None``: ``eval_epochs``, else 300) [ours: the official buffer.py leaves it
    undefined]. Every other MTT option applies to each subset; ``iterations`` is per subset.
    """

    name = "seqmatch"
    resumable = True
    description = "sequential subset matching (SeqMatch) over MTT: K subsets in turn, staged evaluation"
    published = ()
    # CPU profile [ours]: MTT's quick values per subset (its alpha_0 for both), 2 subsets, 25-epoch prefix training.
    quick: ClassVar[dict[str, Any]] = {**{k: v for k, v in MTT.quick.items() if k != "lr_init"},
                                       "lr_inits": 0.01, "subsets": 2, "prefix_epochs": 25}
    official_code = ("shqii1j/seqmatch @ 9d7efad: seqmatch-mtt/run.sh, eval.sh, buffer.py, distill_eval_new.py, "
                     "evaluation.py, utils.py")
    deviations: ClassVar[tuple[Deviation, ...]] = (
        Deviation("stage result kept", "each stage's images_best.pt and best_lr.pt: best mean test accuracy (5 nets, every "
                  "100 iterations); later stages' experts and frozen subsets are built on them",
                  "each stage's final iteration (images and alpha)", "the test split is never used for a choice (§3)"),
        Deviation("expert per iteration", "the next expert of a shuffled buffer file, file after file",
                  "one of the experts drawn uniformly", "all experts sit in one buffer on the device; no files to walk"),
        Deviation("expert epochs", "buffer.py trains 50 (subset 1: MTT's buffer) or 20 (later subsets) per expert",
                  "only up to epoch end - 1 of the subset's interval, the last a draw reaches",
                  "without lr decay the earlier snapshots are the same; the rest is never read"),
        Deviation("later experts' start nets", "trained by evaluate_synset for epoch_eval_train epochs, which buffer.py never "
                  "defines (the script stops there)", "prefix_epochs (default: the evaluation E, 1000, the other scripts' "
                  "default)", "the code leaves it undefined"),
        Deviation("initial images", "each subset draws its own random real images (a later one may repeat an earlier one's)",
                  "one draw of ipc per class, split into disjoint subsets", "no image is stored twice in the budget"),
        Deviation("step-size guard", "none: alpha may turn negative or NaN",
                  "alpha clamped at lr_floor (counted in the meta); a NaN or exploding loss stops the cell",
                  "a negative or NaN alpha cannot train the evaluation net"),
        Deviation("ZCA whitening", "--zca in every run.sh and eval.sh command",
                  "only on a task loaded with zca=true (off by default); the meta's zca says which",
                  "whitening is the task's preprocessing, shared by every method on it"),
        Deviation("options off run.sh's setting", "values for CIFAR-10 ipc 50 in 3 subsets only: intervals 0-20/0-20/0-10, "
                  "alpha_0 0.001/0.01/0.01, N 30, M 2, lr_img 100, lr_lr 1e-5",
                  "elsewhere, unset options: the §7 MTT row at the total ipc, every interval 0-(T+ + M) (starts in [0, T+), "
                  "as mtt) and the row's alpha_0 for every subset", "the official code gives no values for other settings"),
        Deviation("gradient", "back-propagation through the whole unroll", "TESLA's first-order approximation (§8)",
                  "memory that does not grow with N, as TESLA released it", "mode=tesla-approx"),
        Deviation("sizes", "3 subsets; 100 experts, batch 256; 5,000 iterations per subset; batch_syn classes x ipc_k; E 1000",
                  "2 subsets; 4 experts, batch 32; 50 iterations per subset; N 10, intervals 0-4, lr_img 10, alpha_0 0.01, "
                  "batch_syn 10; later experts' start nets 25 epochs; the task's E",
                  "CPU minutes; MTT's quick values per subset", "profile=quick"),
    )

    def __init__(self, subsets: int = 3, windows: str | None = None, lr_inits: str | float | None = None,
                 prefix_epochs: int | None = None, iterations: int = 5000, syn_steps: int | None = None,
                 expert_epochs: int | None = None, max_start_epoch: int | None = None, lr_img: float | None = None,
                 lr_lr: float | None = None, batch_syn: int | None = None, num_experts: int = 100, expert_lr: float = 0.01,
                 expert_batch: int = 256, expert_group: int = 10, mode: str = "unroll", lr_floor: float = 1e-5,
                 max_loss: float = 1e3, eval_epochs: int | None = 1000):
        super().__init__(iterations, syn_steps, expert_epochs, max_start_epoch, lr_img, lr_lr, None, batch_syn,
                         num_experts, expert_lr, expert_batch, expert_group, mode, lr_floor, max_loss, eval_epochs)
        options.positive(subsets=subsets, prefix_epochs=prefix_epochs)
        parse_windows(windows, subsets, expert_epochs or MIN_M)
        parse_lr_inits(lr_inits, subsets)
        self.subsets, self.windows, self.lr_inits, self.prefix_epochs = subsets, windows, lr_inits, prefix_epochs

    def plan(self, task: TaskView, ipc: int) -> tuple[dict[str, Any], list[Stage]]:
        """The MTT settings the subsets share and each subset's :class:`Stage`, for ``task`` at ``ipc`` (ipc >= 2)."""
        cfg = self.settings(task, ipc)
        given = {**self.overrides, "windows": self.windows, "lr_inits": self.lr_inits}
        example = {k: v for k, v in PUBLISHED_EXAMPLE.items() if k in given and given[k] is None} \
            if (task.name, ipc, self.subsets) == EXAMPLE_SETTING else {}
        if example:
            cfg.update({k: v for k, v in example.items() if k in cfg})
            cfg["preset"] = "the official run.sh (docs/methods.md §15)"
        m = cfg["expert_epochs"]
        windows = parse_windows(example.get("windows", self.windows), self.subsets, m) or \
            [(0, cfg["max_start_epoch"] + m)] * self.subsets
        rates = parse_lr_inits(example.get("lr_inits", self.lr_inits), self.subsets) or [cfg["lr_init"]] * self.subsets
        classes: int = task.num_classes  # type: ignore[assignment]  # supports() admits classification tasks only
        sizes = split_ipc(ipc, min(self.subsets, ipc))
        stages = [Stage(size, window, rate, int(self.overrides["batch_syn"] or classes * size))
                  for size, window, rate in zip(sizes, windows, rates)]
        return {k: v for k, v in cfg.items() if k not in ("max_start_epoch", "lr_init", "batch_syn")}, stages

    def distill(self, task: TaskView, budget: Budget, learner: Learner, context: RunContext) -> Artifact:
        device, ipc = context.device, budget.ipc(task)
        classes: int = task.num_classes  # type: ignore[assignment]  # supports() admits classification tasks only
        if ipc < 2:
            raise NotApplicable(f"{self.name} splits the images of each class into stages; at ipc {ipc} there is one stage, "
                                "which is mtt's distillation: use mtt, or ipc >= 2.")
        cfg, stages = self.plan(task, ipc)
        model = FlatModel(learner.build(task, EXPERT_ARCH_SEED).to(device))
        init = task.train.x[random_subset(task, budget, context.generator)].clone()  # real, class by class
        init = init.view(classes, ipc, *task.input_shape)
        x, y = init[:0, 0], torch.zeros(0, dtype=torch.long, device=device)
        rates: list[Tensor] = []
        ends: list[int] = []
        runs: list[dict[str, Any]] = []
        experts_s = 0.0
        total = len(stages) * self.iterations
        first = 0
        checkpoint = context.checkpointer()
        step, saved = checkpoint.restore()
        resumed = saved["stage"] if step else 0  # the stage a checkpoint was taken in, and the earlier ones' results
        if step:
            x, y, rates, ends, runs = saved["x"], saved["y"], list(saved["rates"]), list(saved["ends"]), list(saved["runs"])
            experts_s, first = saved["experts_s"], saved["first"]
        for k, stage in enumerate(stages):
            if k < resumed:
                continue
            started = time.perf_counter()
            start, key = (None, None) if k == 0 else self._start(task, learner, x, ends, rates, device)
            low, end = stage.window
            buffer, expert_meta = self.experts(task, learner, model, end - 1, context, start, key,
                                               report=lambda done, todo: None)
            experts_s += time.perf_counter() - started
            images = init[:, first : first + stage.ipc].reshape(-1, *task.input_shape)
            labels = torch.arange(classes, device=device).repeat_interleave(stage.ipc)
            stage_cfg = {**cfg, "min_start_epoch": low, "max_start_epoch": end - cfg["expert_epochs"],
                         "lr_init": stage.lr_init, "batch_syn": stage.batch_syn}

            def report(it: int, todo: int, loss: float, lr: float, done: int = k * self.iterations) -> None:
                context.progress.update(done + it, total, loss=loss, lr=lr)

            earlier = {"stage": k, "x": x, "y": y, "rates": rates, "ends": ends, "runs": runs, "experts_s": experts_s, "first": first}
            images, alpha, run = self.match(task, stage_cfg, model, buffer, images, labels, context,
                                            frozen=(x, y) if k else None, stream=k + 1, report=report, checkpoint=checkpoint,
                                            saved=saved if step and k == resumed else None, values=earlier,
                                            offset=k * self.iterations)
            x, y = torch.cat([x, images]), torch.cat([y, labels])
            rates.append(alpha.reshape(1))
            ends.append(len(x))
            runs.append({**run, "ipc": stage.ipc, "window": f"{low}-{end}", "lr_init": stage.lr_init, "batch_syn": stage.batch_syn,
                         **{f"expert_{n}": v for n, v in expert_meta.items() if n in ("expert_cache", "experts_trained")}})
            first += stage.ipc
            if context.should_stop():
                break
        meta = {**cfg, "subsets": [s.ipc for s in stages[: len(runs)]], "stages": runs, "experts_s": experts_s,
                "iterations": sum(r["iterations"] for r in runs), "stopped_early": len(runs) < len(stages) or runs[-1]["stopped_early"],
                "stage_lr": [float(r) for r in rates], "prefix_epochs": self._prefix_epochs(), "init": "real",
                "zca": bool(task.info.get("zca", False)), "labels": "hard, class-balanced within each stage"}
        recipe: dict[str, Any] = {"augment": "dsa", "labels": "class-balanced"}
        if self.eval_epochs is not None:
            recipe["epochs"] = self.eval_epochs
        return Artifact({"x": x, **stage_tensors(ends, torch.cat(rates))}, recipe=recipe, meta=meta)

    def _prefix_epochs(self) -> int:
        return self.prefix_epochs or self.eval_epochs or 300

    def _start(self, task: TaskView, learner: Learner, x: Tensor, ends: list[int], rates: list[Tensor],
               device: torch.device) -> tuple[Any, dict[str, Any]]:
        """How stage-k experts begin: each fresh net trained stage by stage on the frozen subsets with
        their learned rates (the staged evaluation, DSA, the §3 optimiser), and what that depends on."""
        prefix = with_labels(Artifact({"x": x, **stage_tensors(ends, torch.cat(rates))}, {"labels": "class-balanced"}),
                             task.num_classes)
        recipe = Recipe(epochs=self._prefix_epochs(), augment="dsa", dsa_strategy=task.info["dsa_strategy"])

        def start(models: Sequence[nn.Module], seeds: Sequence[int]) -> None:
            fit_classifiers(models, prefix, recipe, [torch.Generator(device).manual_seed(s) for s in seeds])

        return start, {"prefix": content_hash(prefix), "recipe": recipe.as_dict()}
