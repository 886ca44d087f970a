"""The ``seqmatch`` distiller: sequential subset matching over MTT (Du, Shi & Zhou, NeurIPS 2023).

docs/methods.md §15. The ipc budget is split into K subsets per class, distilled one after another
by MTT's trajectory matching (:meth:`~ddbench_mtt.distiller.MTT.match`): subset k learns its images
and its own step size alpha_k while the student also trains on the frozen subsets 1..k-1, against
experts whose trajectories begin from nets trained on those frozen subsets (stage by stage, with
their learned rates). Stage-k experts are cached keyed by the frozen subsets' content hash.

The artifact is staged (ddbench.stages): ``x`` holds the subsets in order (each class-balanced),
``stage.end`` the cumulative row counts and ``stage.lr`` the learned alphas, so evaluation trains
on S1 at alpha_1, then on S1 ∪ S2 at alpha_2, and so on, and the harness counts all of it.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ddbench import options
from ddbench.artifact import content_hash, with_labels
from ddbench.errors import NotApplicable
from ddbench.interfaces import Artifact, Budget, Learner, Recipe, RunContext, TaskView
from ddbench.ops.ensemble import fit_classifiers
from ddbench.ops.subsets import random_subset
from ddbench.stages import stage_tensors
from ddbench_mtt.distiller import EXPERT_ARCH_SEED, MTT
from ddbench_mtt.flat import FlatModel

PUBLISHED_EXAMPLE = {"subsets": 3, "windows": "20,20,10", "lr_img": 100.0, "syn_steps": 30, "expert_epochs": 2}
"""The paper's CIFAR-10 ipc-50 configuration (17 + 17 + 16 images per class), as options."""


def split_ipc(ipc: int, subsets: int) -> list[int]:
    """``ipc`` images per class in ``subsets`` parts as even as possible, larger parts first (50 -> 17, 17, 16)."""
    base, extra = divmod(ipc, subsets)
    return [base + (1 if k < extra else 0) for k in range(subsets)]


def parse_windows(text: str | None, subsets: int) -> list[int] | None:
    """``"20,20,10"`` -> [20, 20, 10] (T+ of each subset), checked against the number of subsets."""
    if text is None:
        return None
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"windows must be comma-separated integers such as '20,20,10' (got {text!r})") from None
    if len(values) != subsets or min(values) < 1:
        raise ValueError(f"windows needs one positive T+ per subset ({subsets}), got {text!r}")
    return values


class SeqMatch(MTT):
    """K subsets distilled in turn by MTT, evaluated in stages with their learned rates.

    ``subsets``: K (used as min(K, ipc); at ipc 1 the cell is skipped: one stage would be MTT itself); ``windows``: each subset's start-epoch bound T+ as
    ``"20,20,10"`` (``None``: MTT's T+ for every subset); ``prefix_epochs``: E of the training that
    takes a stage-k expert's initial net through the frozen subsets (``None``: ``eval_epochs``, else
    300) [ours: the paper's experts start from nets trained on the earlier subsets; how long is ours].
    Every MTT option applies to each subset; ``iterations`` is per subset.
    """

    name = "seqmatch"
    description = "sequential subset matching (SeqMatch) over MTT: K subsets in turn, staged evaluation"
    published = ()
    # CPU profile [ours]: MTT's quick values per subset, 2 subsets, 25-epoch prefix training.
    quick = {**MTT.quick, "subsets": 2, "prefix_epochs": 25}

    def __init__(self, subsets: int = 3, windows: str | None = None, prefix_epochs: int | None = None,
                 iterations: int = 5000, syn_steps: int | None = None, expert_epochs: int | None = None,
                 max_start_epoch: int | None = None, lr_img: float | None = None, lr_lr: float | None = None,
                 lr_init: float | None = None, batch_syn: int | None = None, num_experts: int = 100,
                 expert_lr: float = 0.01, expert_batch: int = 256, expert_group: int = 10, mode: str = "unroll",
                 lr_floor: float = 1e-5, max_loss: float = 1e3, eval_epochs: int | None = 1000):
        super().__init__(iterations, syn_steps, expert_epochs, max_start_epoch, lr_img, lr_lr, lr_init, batch_syn,
                         num_experts, expert_lr, expert_batch, expert_group, mode, lr_floor, max_loss, eval_epochs)
        options.positive(subsets=subsets, prefix_epochs=prefix_epochs)
        parse_windows(windows, subsets)
        self.subsets, self.windows, self.prefix_epochs = subsets, windows, prefix_epochs

    def distill(self, task: TaskView, budget: Budget, learner: Learner, context: RunContext) -> Artifact:
        device, ipc = context.device, budget.ipc(task)
        classes: int = task.num_classes  # type: ignore[assignment]
        if ipc < 2:
            raise NotApplicable(f"{self.name} splits the images of each class into stages; at ipc {ipc} there is one stage, "
                                "which is mtt's distillation: use mtt, or ipc >= 2.")
        k_count = min(self.subsets, ipc)
        sizes = split_ipc(ipc, k_count)
        cfg = self.settings(task, ipc)
        windows = parse_windows(self.windows, self.subsets) or [cfg["max_start_epoch"]] * k_count
        model = FlatModel(learner.build(task, EXPERT_ARCH_SEED).to(device))
        init = task.train.x[random_subset(task, budget, context.generator)].clone()  # real, class by class
        init = init.view(classes, ipc, *task.input_shape)
        x, y = init[:0, 0], torch.zeros(0, dtype=torch.long, device=device)
        rates: list[Tensor] = []
        ends: list[int] = []
        runs, experts_s, expert_meta = [], 0.0, {}
        total = k_count * self.iterations
        first = 0
        for k, (size, window) in enumerate(zip(sizes, windows)):
            started = time.perf_counter()
            start, key = (None, None) if k == 0 else self._start(task, learner, x, ends, rates, device)
            buffer, expert_meta = self.experts(task, learner, model, window + cfg["expert_epochs"], context, start, key,
                                               report=lambda done, todo: None)
            experts_s += time.perf_counter() - started
            images = init[:, first : first + size].reshape(-1, *task.input_shape)
            labels = torch.arange(classes, device=device).repeat_interleave(size)
            offset = k * self.iterations
            images, alpha, run = self.match(
                task, {**cfg, "max_start_epoch": window}, model, buffer, images, labels, context,
                frozen=(x, y) if k else None, stream=k + 1,
                report=lambda it, todo, loss, lr, o=offset: context.progress.update(o + it, total, loss=loss, lr=lr))
            x, y = torch.cat([x, images]), torch.cat([y, labels])
            rates.append(alpha.reshape(1))
            ends.append(len(x))
            runs.append({**run, "ipc": size, "max_start_epoch": window, **{f"expert_{n}": v for n, v in expert_meta.items()
                                                                          if n in ("expert_cache", "experts_trained")}})
            first += size
            if context.should_stop():
                break
        meta = {**cfg, "subsets": sizes[: len(runs)], "windows": windows[: len(runs)], "stages": runs, "experts_s": experts_s,
                "iterations": sum(r["iterations"] for r in runs), "stopped_early": len(runs) < k_count or runs[-1]["stopped_early"],
                "stage_lr": [float(r) for r in rates], "prefix_epochs": self._prefix_epochs(), "init": "real", "zca": False,
                "labels": "hard, class-balanced within each stage"}
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
