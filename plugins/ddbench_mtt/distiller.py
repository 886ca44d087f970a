"""The ``mtt`` distiller: matching training trajectories (Cazenavette et al., CVPR 2022).

``docs/methods.md`` §7: S starts as random real images per class (stored class by class, labels
implied), alpha as alpha_0. Every iteration picks an expert and a start epoch t in [0, T+), unrolls
the student N steps from the expert's epoch t on S, and moves S and alpha (SGD, momentum 0.5) to
bring the student close to the expert's epoch t + M. The learned alpha is the evaluation lr: it is
an artifact tensor (``lr``), counted with the artifact, and the recipe declares it with per-sample
DSA (§3).

Guard (§7, §10.5): alpha is clamped on the device to at least ``lr_floor`` after every step (the
number of clamped iterations goes to ``meta["lr_clamped"]``); a non-finite alpha or loss, or a loss
above ``max_loss``, stops the cell with a :class:`DivergenceError` naming the iteration.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from ddbench.contracts import options
from ddbench.contracts.checkpoint import Checkpointer
from ddbench.contracts.deviations import Deviation
from ddbench.contracts.interfaces import Artifact, Distiller, Learner, RunContext, TaskView
from ddbench.errors import DDBenchError
from ddbench.ops.augment import DSA
from ddbench.ops.subsets import random_subset
from ddbench.vocab import Budget
from ddbench_mtt.experts import ExpertRecipe, StartFn, expert_buffer
from ddbench_mtt.flat import FlatModel
from ddbench_mtt.presets import preset
from ddbench_mtt.published import PUBLISHED
from ddbench_mtt.unroll import EXACT_MODES, MODES, draw_schedule, draw_start, gradient_fn

TUNED = ("syn_steps", "expert_epochs", "max_start_epoch", "lr_img", "lr_lr", "lr_init", "batch_syn")
EXPERT_ARCH_SEED = 0  # the student's module only supplies the architecture; its weights are unused
REPORTS = 20  # progress reports (and divergence checks, one host sync each) per run


class DivergenceError(DDBenchError):
    """The learned step size or the matching loss became NaN, infinite or exploded."""


class MTT(Distiller):
    """Trajectory matching with cached experts and a learned step size (§7, §8).

    Options left at ``None`` come from the §7 table for the task and ipc (see ``presets``).
    ``mode``: ``unroll`` (exact, memory grows with syn_steps), ``exact-constant-memory`` (exact,
    recomputes instead of storing) or ``tesla-approx`` (TESLA's first-order approximation, labelled).
    ``eval_epochs``: E of the evaluation recipe (§3: 1000 for MTT); ``None`` keeps the task's.
    """

    name = "mtt"
    resumable = True
    published = PUBLISHED
    description = "matching training trajectories (MTT) with a learned step size; cached experts"
    # CPU profile [ours, chosen on digits' validation split, the quick suite's image task]: 4
    # experts trained 4 epochs together, 50 iterations of 10 student steps on batches of 10, the
    # task's own evaluation E. Digits' train split is ~1.2k images, so an expert batch of 256 would
    # give 5 steps per epoch and experts that barely leave their init (23 % val at epoch 4): batch
    # 32 gives ~38. One alpha_0 and lr_img serve ipc 1 and 10 (the §7 rows' 100 overshoots at ipc 10).
    quick: ClassVar[dict[str, Any]] = {"iterations": 50, "num_experts": 4, "expert_group": 4, "expert_batch": 32,
                                       "max_start_epoch": 2, "syn_steps": 10, "batch_syn": 10, "lr_init": 0.01,
                                       "lr_img": 10.0, "eval_epochs": None}
    official_code = "GeorgeCazenavette/mtt-distillation @ 50dccea: distill.py, buffer.py, utils.py and the repository's README"
    deviations: ClassVar[tuple[Deviation, ...]] = (
        Deviation("result kept", "images_best.pt: the checkpoint with the best mean test accuracy (5 nets, every 100 iterations)",
                  "the final iteration", "the test split is never used for a choice (§3)"),
        Deviation("expert per iteration", "the next expert of a shuffled buffer file, file after file",
                  "one of the experts drawn uniformly", "all experts sit in one buffer on the device; no files to walk"),
        Deviation("expert epochs", "50 trained and stored per expert", "only the first T+ + M (a run reads up to epoch T+ - 1 + M)",
                  "without lr decay the earlier snapshots are the same; the rest is never read"),
        Deviation("step-size guard", "none: alpha may turn negative or NaN",
                  "alpha clamped at lr_floor (counted in the meta); a NaN or exploding loss stops the cell",
                  "a negative or NaN alpha cannot train the evaluation net"),
        Deviation("ZCA whitening", "--zca for CIFAR-10 ipc 1/10 and CIFAR-100 ipc 1/50 (the §7 rows)",
                  "only on a task loaded with zca=true (off by default); the meta's zca says which",
                  "whitening is the task's preprocessing, shared by every method on it"),
        Deviation("gradient", "back-propagation through the whole unroll", "TESLA's first-order approximation (§8)",
                  "memory that does not grow with N, as TESLA released it", "mode=tesla-approx"),
        Deviation("sizes", "100 experts, batch 256; 5,000 iterations; N, T+, lr_img, alpha_0 and batch_syn of the §7 row; E 1000",
                  "4 experts, batch 32; 50 iterations; N 10, T+ 2, lr_img 10, alpha_0 0.01, batch_syn 10; the task's E",
                  "CPU minutes; chosen on digits' validation split", "profile=quick"),
    )

    def __init__(self, iterations: int = 5000, syn_steps: int | None = None, expert_epochs: int | None = None,
                 max_start_epoch: int | None = None, lr_img: float | None = None, lr_lr: float | None = None,
                 lr_init: float | None = None, batch_syn: int | None = None, num_experts: int = 100,
                 expert_lr: float = 0.01, expert_batch: int = 256, expert_group: int = 10, mode: str = "unroll",
                 lr_floor: float = 1e-5, max_loss: float = 1e3, eval_epochs: int | None = 1000):
        options.one_of("mode", mode, MODES)
        options.positive(iterations=iterations, num_experts=num_experts, expert_group=expert_group, expert_batch=expert_batch,
                         syn_steps=syn_steps, expert_epochs=expert_epochs, max_start_epoch=max_start_epoch,
                         batch_syn=batch_syn, lr_floor=lr_floor)
        self.iterations, self.mode, self.lr_floor, self.max_loss = iterations, mode, lr_floor, max_loss
        self.overrides = {"syn_steps": syn_steps, "expert_epochs": expert_epochs, "max_start_epoch": max_start_epoch,
                          "lr_img": lr_img, "lr_lr": lr_lr, "lr_init": lr_init, "batch_syn": batch_syn}
        self.num_experts, self.expert_group, self.eval_epochs = num_experts, expert_group, eval_epochs
        self.expert_lr, self.expert_batch = expert_lr, expert_batch

    def supports(self, task: TaskView, learner: Learner) -> str | None:
        if task.num_classes is None:
            return f"{self.name} distils class-balanced labelled images; the task is regression"
        if len(task.input_shape) != 3 or not task.info.get("dsa_strategy"):
            return f"{self.name} trains experts and the student with DSA, which needs (C, H, W) image inputs"
        return None

    def settings(self, task: TaskView, ipc: int) -> dict[str, Any]:
        """The hyperparameters for ``task`` at ``ipc``: the §7 row, with the user's options over it."""
        row, source = preset(task.name, ipc)
        values = {k: getattr(row, k) if self.overrides[k] is None else self.overrides[k] for k in TUNED}
        n_syn = ipc * task.num_classes  # type: ignore[operator]  # supports() admits classification tasks only
        values["batch_syn"] = min(values["batch_syn"] or n_syn, n_syn)
        return {**values, "preset": source, "user_options": sorted(k for k in TUNED if self.overrides[k] is not None)}

    def distill(self, task: TaskView, budget: Budget, learner: Learner, context: RunContext) -> Artifact:
        device, ipc = context.device, budget.ipc(task)
        cfg = self.settings(task, ipc)
        model = FlatModel(learner.build(task, EXPERT_ARCH_SEED).to(device))
        started = time.perf_counter()
        buffer, meta = self.experts(task, learner, model, cfg["max_start_epoch"] + cfg["expert_epochs"], context)
        meta["experts_s"] = time.perf_counter() - started

        images = task.train.x[random_subset(task, budget, context.generator)].clone()  # real init, class by class
        classes: int = task.num_classes  # type: ignore[assignment]  # supports() admits classification tasks only
        labels = torch.arange(classes, device=device).repeat_interleave(ipc)
        checkpoint = context.checkpointer()
        step, saved = checkpoint.restore()
        images, alpha, run = self.match(task, cfg, model, buffer, images, labels, context, checkpoint=checkpoint,
                                        saved=saved if step else None)
        meta.update(cfg)
        meta.update(run)
        meta.update({"init": "real", "zca": bool(task.info.get("zca", False)), "labels": "hard, class-balanced"})
        recipe_overrides: dict[str, Any] = {"augment": "dsa", "lr_from_artifact": "lr", "labels": "class-balanced"}
        if self.eval_epochs is not None:
            recipe_overrides["epochs"] = self.eval_epochs
        tensors = {"x": images, "lr": alpha.reshape(1)}
        return Artifact(tensors, recipe=recipe_overrides, meta=meta)

    def experts(self, task: TaskView, learner: Learner, model: FlatModel, epochs: int, context: RunContext,
                start: StartFn | None = None, start_key: dict[str, Any] | None = None,
                report: Callable[[int, int], None] | None = None) -> tuple[Tensor, dict[str, Any]]:
        """The expert buffer (``epochs`` + 1 snapshots each) of this method's expert options, from the
        cache or trained; ``start``/``start_key`` as :func:`~ddbench_mtt.experts.expert_buffer`."""
        recipe = ExpertRecipe(self.expert_lr, self.expert_batch, task.info["dsa_strategy"])
        return expert_buffer(task, learner, model, self.num_experts, epochs, recipe, self.expert_group, context.cache_dir,
                             context.device, report or (lambda done, todo: context.progress.update(done, todo)),
                             start=start, start_key=start_key)

    def match(self, task: TaskView, cfg: dict[str, Any], model: FlatModel, buffer: Tensor, images: Tensor, labels: Tensor,
              context: RunContext, frozen: tuple[Tensor, Tensor] | None = None, stream: int = 1,
              report: Callable[[int, int, float, float], None] | None = None, checkpoint: Checkpointer | None = None,
              saved: dict[str, Any] | None = None, values: dict[str, Any] | None = None,
              offset: int = 0) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """Learn ``images`` and alpha by trajectory matching against ``buffer`` (§7) for the iterations.

        ``frozen`` (images, labels): rows the student also trains on but that stay fixed (SeqMatch's
        earlier subsets); they come first in the student's set. ``stream``: which fork of the run's
        seed draws the batches and DSA. Start epochs are uniform on [``cfg.get("min_start_epoch", 0)``,
        ``cfg["max_start_epoch"]``). Returns the learned images and alpha (detached) and facts for the meta.

        ``checkpoint``: offered a checkpoint after every iteration, at step ``offset`` + the iteration,
        with the caller's ``values`` beside the loop's own; ``saved``: the values of the checkpoint
        the caller restored, when it was taken in this loop (its objects are loaded as they are named).
        """
        device = images.device
        syn_steps, m, t_min, t_max = cfg["syn_steps"], cfg["expert_epochs"], cfg.get("min_start_epoch", 0), cfg["max_start_epoch"]
        fixed = images[:0] if frozen is None else frozen[0].detach()
        all_labels = labels if frozen is None else torch.cat([frozen[1], labels])
        batch_syn = min(cfg["batch_syn"], len(fixed) + len(images))
        total = self.iterations
        images = images.detach().clone().requires_grad_(True)
        alpha = torch.tensor(float(cfg["lr_init"]), device=device, dtype=images.dtype, requires_grad=True)
        opt_images = torch.optim.SGD([images], lr=cfg["lr_img"], momentum=0.5)
        opt_alpha = torch.optim.SGD([alpha], lr=cfg["lr_lr"], momentum=0.5)
        offset = context.seed + 1_000_003 * (stream - 1)  # stream 1: the plain run's seeds
        host = torch.Generator().manual_seed(offset)  # expert and start-epoch choices: no device sync
        batches = context.fork(stream)
        dsa = DSA(task.info["dsa_strategy"], offset, device)
        grads = gradient_fn(self.mode)
        clamped = torch.zeros((), device=device, dtype=torch.long)
        losses: list[tuple[int, float, float]] = []
        every = max(1, total // REPORTS)
        done = 0
        starts: set[int] = set()
        checkpoint = checkpoint or context.checkpointer()
        checkpoint.track(images=images, alpha=alpha, opt_images=opt_images, opt_alpha=opt_alpha, host=host, batches=batches,
                         dsa=dsa.generator, clamped=clamped)
        last = None  # the loss of the last iteration
        if saved is not None:
            done, last, losses, starts = saved["iteration"], saved["loss"], list(saved["losses"]), set(saved["starts"])
        for it in range(done + 1, total + 1):
            e = int(torch.randint(self.num_experts, (1,), generator=host))
            t = draw_start(t_min, t_max, host)
            starts.add(t)
            union = torch.cat([fixed, images]) if len(fixed) else images
            schedule = draw_schedule(len(union), syn_steps, batch_syn, dsa, task.input_shape[-1], batches, device)
            out = grads(model, union, all_labels, alpha, buffer[e, t], buffer[e, t + m], schedule)
            images.grad, alpha.grad = out.images[len(fixed):], out.alpha.reshape(alpha.shape)
            opt_images.step()
            opt_alpha.step()
            with torch.no_grad():
                clamped += (alpha < self.lr_floor).long()
                alpha.clamp_(min=self.lr_floor)
            done, last = it, out.loss
            if it % every == 0 or it == total:
                losses.append(self._check(it, out.loss, alpha))
                if report is not None:
                    report(it, total, losses[-1][1], losses[-1][2])
                else:
                    context.progress.update(it, total, loss=losses[-1][1], lr=losses[-1][2])
            checkpoint.step(offset + it, **(values or {}), iteration=it, loss=last, losses=losses, starts=sorted(starts))
            if context.should_stop():
                break
        assert last is not None  # iterations >= 1, and a checkpoint is taken after one
        if not losses or losses[-1][0] != done:
            losses.append(self._check(done, last, alpha))
        run = {"mode": self.mode, "exact_gradient": self.mode in EXACT_MODES, "iterations": done, "stopped_early": done < total,
               "lr": float(alpha.detach()), "lr_clamped": int(clamped), "lr_floor": self.lr_floor, "loss_curve": losses,
               "start_epochs": sorted(starts)}
        return images.detach().clone(), alpha.detach().clone(), run

    def _check(self, it: int, loss: Tensor, alpha: Tensor) -> tuple[int, float, float]:
        """(iteration, loss, alpha) as floats (one host sync); a divergence is an error."""
        value, lr = float(loss), float(alpha.detach())
        if not (abs(value) < float("inf") and abs(lr) < float("inf")) or value > self.max_loss:
            raise DivergenceError(
                f"mtt diverged at iteration {it}: matching loss {value:.4g}, learned lr {lr:.4g} "
                f"(limit max_loss={self.max_loss:g}): lower lr_img or lr_lr, or max_start_epoch."
            )
        return it, value, lr

