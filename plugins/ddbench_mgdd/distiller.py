"""The ``mgdd`` distiller: a conditional generator meta-trained on a source task and adapted to the
target in a few steps (after Liu & Wang, NeurIPS 2023, "A Meta Generator for Fast Dataset
Distillation"; no official code is public, so every choice below is ours unless the paper states it).

docs/methods.md §16. Per step (meta-training on the source, adaptation on the target alike): draw
``ipc`` real images per class as the generator's input, generate the synthetic set, embed it and a
real batch with a freshly initialised learner net, solve the labels by least squares in that
feature space and descend on the kernel-ridge residual (:mod:`ddbench_mgdd.objective`), both sets
augmented by one shared DSA draw per step. The
meta-trained generator is cached (ddbench.ops.cache) and shared by every distillation seed.

Two accounting forms, one row each (``form``):

- ``outputs``: the generated images ``x`` and their least-squares labels ``y`` (N, C);
- ``regenerate``: the adapted generator's weights ``gen.*`` (ddbench.ops.generator), its
  conditioning inputs ``x`` and the labels ``y``; the learner regenerates the images before training.
  The weights share the budget with the inputs, so this form holds fewer images per class.

Neither form needs real data at evaluation time.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from ddbench import options
from ddbench.errors import BudgetError
from ddbench.interfaces import Artifact, Budget, Distiller, Learner, RunContext, TaskView
from ddbench.ops.augment import DSA, apply
from ddbench.ops.cache import cache_key, fingerprint
from ddbench.ops.generator import ConditionalGenerator, generator_tensors
from ddbench.ops.subsets import random_subset
from ddbench.ops.training import draw_seed
from ddbench_mgdd.objective import as_distribution, solve

FORMS = ("outputs", "regenerate")
SOURCES = {"digits": "mnist5k"}  # default source task per target [ours]; any other target: digits
META_SEED = 0  # the meta-trained generator does not depend on the distillation seed (one cache entry)
LABEL_BATCH = 2048  # real images in the final label solve
CACHE_FOLDER = "mgdd-generators"
VERSION = 2  # of the objective, training loop and initialisation: part of the cache key


class MGDD(Distiller):
    """Generator-based distillation with a source-trained, target-adapted conditional generator.

    ``form``: ``outputs`` or ``regenerate`` (what the artifact stores, above). ``source``: the task
    the generator is meta-trained on (``None``: mnist5k for digits, digits otherwise; any image task
    with the target's channels and classes whose files are present). ``meta_steps`` and
    ``adapt_steps``: steps on the source and on the target; ``width``/``depth``: the generator's;
    ``lr``: Adam's; ``batch_real``: real images per step; ``lam``, ``mu``: the relative ridge of the
    kernel regression and of the label solve's pull to one-hot; ``augment``: one siamese DSA draw per
    step on the generated and the real batch alike.
    """

    name = "mgdd"
    description = "MGDD: conditional generator meta-trained on a source task, adapted in a few steps; least-squares labels"
    quick = {"meta_steps": 50, "adapt_steps": 100, "width": 16, "batch_real": 128}  # CPU profile [ours]

    def __init__(self, form: str = "outputs", source: str | None = None, meta_steps: int = 2000, adapt_steps: int = 100,
                 width: int = 32, depth: int = 2, lr: float = 1e-3, batch_real: int = 256, lam: float = 1e-3,
                 mu: float = 1.0, augment: bool = True):
        options.one_of("form", form, FORMS)
        options.flags(augment=augment)
        options.positive(meta_steps=meta_steps, width=width, depth=depth, lr=lr, batch_real=batch_real, lam=lam, mu=mu)
        options.non_negative(adapt_steps=adapt_steps)
        self.form, self.source, self.meta_steps, self.adapt_steps = form, source, meta_steps, adapt_steps
        self.width, self.depth, self.lr, self.batch_real, self.lam, self.mu = width, depth, lr, batch_real, lam, mu
        self.augment = augment

    def source_name(self, task: TaskView) -> str:
        return self.source or SOURCES.get(task.name, "digits")

    def supports(self, task: TaskView, learner: Learner) -> str | None:
        if task.num_classes is None or len(task.input_shape) != 3:
            return "mgdd generates labelled images: it needs a classification task with (C, H, W) inputs"
        if not learner.supports_embedding:
            return f"mgdd solves its labels in a feature space; learner {learner.name!r} has none (supports_embedding): use convnet"
        return None

    def distill(self, task: TaskView, budget: Budget, learner: Learner, context: RunContext) -> Artifact:
        device, classes = context.device, task.num_classes
        assert classes is not None
        per_class = self.rows_per_class(task, budget)
        started = time.perf_counter()
        generator, meta = self.meta_trained(task, learner, context)
        meta_s = time.perf_counter() - started

        started = time.perf_counter()
        idx = random_subset(task, budget, context.generator).view(classes, -1)[:, :per_class].reshape(-1)
        inputs = task.train.x[idx].clone()
        c = torch.arange(classes, device=device).repeat_interleave(per_class)
        seeds = torch.Generator(device).manual_seed(draw_seed(context.generator))
        curve = self.train(generator, task, learner, self.adapt_steps, seeds, context, fixed=(inputs, c))
        with torch.no_grad():
            images = generator(inputs, c)
        net = learner.build(task, draw_seed(seeds)).to(device)
        real = torch.randperm(len(task.train), generator=seeds, device=device)[:LABEL_BATCH]
        with torch.no_grad():
            _, solved = solve(learner.embed(net, images), learner.embed(net, task.train.x[real]),
                              F.one_hot(task.train.y[real], classes).float(), F.one_hot(c, classes).float(), self.lam, self.mu)
        y = as_distribution(solved)
        adapt_s = time.perf_counter() - started
        if self.form == "outputs":
            tensors = {"x": images, "y": y}
        else:
            tensors = {"x": inputs, "y": y, **generator_tensors(generator)}
        meta.update({"form": self.form, "ipc_stored": per_class, "iterations": self.adapt_steps, "adapt_s": adapt_s,
                     "meta_s": meta_s, "adapt_loss_curve": curve, "labels": "least-squares in a random feature space, "
                     "clipped and renormalised (ours)", "needs_real_data_at_evaluation": False,
                     "generator_params": sum(p.numel() for p in generator.parameters())})
        return Artifact(tensors, recipe={"augment": "dsa"}, meta=meta)

    def rows_per_class(self, task: TaskView, budget: Budget) -> int:
        """Images per class the form can store: ``ipc`` for the outputs; for the regeneration form,
        what is left once the generator's weights are charged (a BudgetError when not one)."""
        ipc = budget.ipc(task)
        if self.form == "outputs":
            return ipc
        classes = task.num_classes or 1
        weights = sum(p.numel() for p in ConditionalGenerator(task.input_shape[0], classes, self.width, self.depth).parameters())
        per_class = (budget.scalars(task) - weights) // (classes * (task.input_size + 1))
        if per_class < 1:
            raise BudgetError(f"budget {budget} cannot hold mgdd's generator ({weights} weights) and one input per class "
                              f"on {task.name!r}: raise it, lower width, or use form=outputs.")
        return min(per_class, ipc)

    def meta_trained(self, task: TaskView, learner: Learner, context: RunContext) -> tuple[ConditionalGenerator, dict[str, Any]]:
        """The generator meta-trained on the source task, from the cache or trained now (and cached)."""
        from ddbench.plugins import get_plugin_manager
        from ddbench.suite import load_task

        device, name = context.device, self.source_name(task)
        _, source, _ = load_task(get_plugin_manager(), name, {}, context.profile, device)
        if source.input_shape[0] != task.input_shape[0] or source.num_classes != task.num_classes or len(source.input_shape) != 3:
            raise ValueError(f"mgdd's source task {name!r} has inputs {source.input_shape} and {source.num_classes} classes; the "
                             f"target {task.name!r} has {task.input_shape} and {task.num_classes}: pick a source with the same "
                             "channels and classes (source=...).")
        config, key = cache_key({"source": name, "train": fingerprint(source.train), "learner": learner.name,
                                 "learner_options": vars(learner), "width": self.width, "depth": self.depth, "lr": self.lr,
                                 "steps": self.meta_steps, "batch_real": self.batch_real, "lam": self.lam, "mu": self.mu,
                                 "augment": self.augment, "seed": META_SEED, "version": VERSION})
        path = Path(context.cache_dir) / CACHE_FOLDER / f"{key}.safetensors"
        with torch.random.fork_rng(devices=[]):  # its initial weights from META_SEED, never the global generator's state
            torch.manual_seed(META_SEED)
            generator = ConditionalGenerator(task.input_shape[0], task.num_classes or 1, self.width, self.depth)
        meta: dict[str, Any] = {"source": name, "meta_steps": self.meta_steps, "meta_cache": str(path)}
        if path.is_file():
            generator.load_state_dict(load_file(str(path)))
            meta["meta_cached"] = True
            return generator.to(device), meta
        generator = generator.to(device)
        seeds = torch.Generator(device).manual_seed(META_SEED)
        meta["meta_loss_curve"] = self.train(generator, source, learner, self.meta_steps, seeds, context)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}, str(tmp))
        tmp.replace(path)
        meta["meta_cached"] = False
        return generator, meta

    def train(self, generator: ConditionalGenerator, task: TaskView, learner: Learner, steps: int, seeds: torch.Generator,
              context: RunContext, fixed: tuple[Tensor, Tensor] | None = None) -> list[tuple[int, float]]:
        """``steps`` Adam steps of the objective on ``task``: a fresh random net per step, the
        generator's inputs redrawn per step (meta-training, ``fixed=None``) or ``fixed`` (adaptation).
        Returns the loss every tenth of the run."""
        device, classes = context.device, task.num_classes or 1
        opt = torch.optim.Adam(generator.parameters(), lr=self.lr)
        per_class = 10 if fixed is None else len(fixed[0]) // classes  # meta-training episodes: 10 per class [ours]
        pools = [task.class_index(k) for k in range(classes)]
        dsa = DSA(task.info["dsa_strategy"], draw_seed(seeds), device) if self.augment else None
        curve: list[tuple[int, float]] = []
        every = max(1, steps // 10)
        for step in range(1, steps + 1):
            if fixed is None:
                idx = torch.cat([p[torch.randint(len(p), (per_class,), generator=seeds, device=device)] for p in pools])
                inputs, c = task.train.x[idx], task.train.y[idx]
            else:
                inputs, c = fixed
            net = learner.build(task, draw_seed(seeds)).to(device)
            for p in net.parameters():
                p.requires_grad_(False)
            real = torch.randint(len(task.train), (self.batch_real,), generator=seeds, device=device)
            fake, real_x = generator(inputs, c), task.train.x[real]
            if dsa is not None:
                omega = dsa.plan(1, 1, real_x.shape[-1])[:, 0]
                fake, real_x = apply(fake, omega.repeat(len(fake))), apply(real_x, omega.repeat(len(real_x)))
            with torch.no_grad():
                features_real = learner.embed(net, real_x)
            loss, _ = solve(learner.embed(net, fake), features_real,
                            F.one_hot(task.train.y[real], classes).float(), F.one_hot(c, classes).float(), self.lam, self.mu)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % every == 0 or step == steps:
                curve.append((step, float(loss.detach())))
                context.progress.update(step, steps, loss=curve[-1][1])
        if steps == 0:
            context.progress.update(0, 0)
        return curve
