"""``recognition``: do models trained on real data alone classify the distilled images as their own
class? (docs/analyses.md §4, paper section 3)."""
from __future__ import annotations

import math
import statistics
from typing import Any

import torch
from torch import nn

from ddbench.analysis.runner import AnalysisContext, labelled
from ddbench.budget.labels import installed, logits, skeleton, teacher_learner
from ddbench.contracts.analysis import Analysis, Metric, Outcome, Subject, check_size_protocol
from ddbench.contracts.interfaces import RunContext
from ddbench.contracts.recipe import Recipe
from ddbench.ops.probe import PAPER_LR, PAPER_MOMENTUM, train_steps
from ddbench.ops.teacher import squeeze_teacher

OFFICIAL, OURS = "official", "ours"
RECIPES = (OFFICIAL, OURS)
"""How a pool model trains on the full real train split, without augmentation. ``official``: the
paper's notebook (``pretrained_visualization.ipynb``): shuffled batches of :data:`OFFICIAL_BATCH`,
SGD lr 0.01, momentum 0.9, no weight decay, constant lr (:func:`ddbench.ops.probe.train_steps`).
``ours``: :func:`ours_recipe`, with weight decay and a decay."""
OFFICIAL_BATCH = 256
POOL_SEED = 44_000  # the official-recipe models are built and shuffled from this seed
POOL = {
    # (learner spec, epochs, recipe). paper: the notebook's ConvNet (40 epochs) and width-16 ConvNet (20) with its
    # recipe; its ResNets were loaded checkpoints, so their training (200 epochs, our recipe) is ours.
    # ci (ours): smaller, shorter models with our recipe (the committed ci pages were computed so).
    "ci": (("convnet:width=32", 20, OURS), ("convnet:width=16", 10, OURS), ("resnet:depth=18,width=16", 10, OURS)),
    "paper": (("convnet", 40, OFFICIAL), ("convnet:width=16", 20, OFFICIAL), ("resnet:depth=18", 200, OURS),
              ("resnet:depth=34", 200, OURS)),
}


def ours_recipe(epochs: int) -> Recipe:
    """The ``ours`` recipe for ``epochs`` epochs: SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch
    256, lr x 0.1 once after epoch index E//2 + 1 (E = ``epochs`` - 1), no augmentation."""
    return Recipe(epochs=epochs - 1, lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=256, schedule="step", augment="none")


def member(text: str) -> tuple[str, int, str]:
    """A pool entry ``spec@epochs`` (official recipe) or ``spec@epochs@recipe`` as (spec, epochs, recipe)."""
    parts = text.split("@")
    if len(parts) not in (2, 3) or not parts[1].isdigit() or (len(parts) == 3 and parts[2] not in RECIPES):
        raise ValueError(f"pool entry {text!r}: write spec@epochs or spec@epochs@recipe (recipe: {', '.join(RECIPES)})")
    return parts[0], int(parts[1]), parts[2] if len(parts) == 3 else OFFICIAL


class Recognition(Analysis):
    """The fraction of distilled images a pool of real-trained reference models assigns to their own label."""

    name = "recognition"
    version = "2"
    description = "recognition of distilled images by a pool of real-trained models (are they real-like?)"
    metrics = (
        Metric("recognition_acc@*", "fraction", True, "distilled images predicted as their own label by pool model *"),
        Metric("recognition_acc_mean", "fraction", True, "mean of recognition_acc over the pool"),
        Metric("own_class_confidence", "probability", True, "mean softmax probability of the own label, over pool and images"),
        Metric("pool_test_acc@*", "accuracy", True, "test accuracy of pool model * (measured, never used to choose)"),
    )

    def __init__(self, size: str = "ci", protocol: str = "paper", pool: list[str] | None = None):
        check_size_protocol(size, protocol)  # no training on D here: protocol is accepted for a uniform interface
        self.size, self.protocol = size, protocol
        self.pool = tuple(POOL[size]) if pool is None else tuple(member(s) for s in pool)

    def analyze(self, subject: Subject, context: AnalysisContext) -> Outcome:
        view, device = subject.view, context.device
        d = labelled(subject).to(device)
        own = d.y.argmax(1) if d.y.is_floating_point() else d.y
        classes = int(view.num_classes or 0)
        metrics: dict[str, float | bool] = {}
        per_class, confidences, info = [], [], {}
        for i, (spec, epochs, recipe) in enumerate(self.pool):
            model, facts = self._model(subject, context, spec, epochs, recipe)
            with torch.no_grad():
                probs = torch.softmax(model(d.x), 1)
                test_pred = torch.cat([model(subject.test.x[j : j + 2048]).argmax(1) for j in range(0, len(subject.test.x), 2048)])
            hit = (probs.argmax(1) == own).float()
            name = f"{spec}@{epochs}"
            metrics[f"recognition_acc@{name}"] = float(hit.mean())
            metrics[f"pool_test_acc@{name}"] = float((test_pred == subject.test.y).float().mean())
            confidences.append(float(probs.gather(1, own[:, None]).mean()))
            per_class.append(torch.stack([hit[own == c].mean() if (own == c).any() else torch.tensor(float("nan"), device=device)
                                          for c in range(classes)]))
            info[name] = facts
            context.progress(f"recognition {subject.label}", i + 1, len(self.pool))
        metrics["recognition_acc_mean"] = statistics.fmean(metrics[f"recognition_acc@{s}@{e}"] for s, e, _ in self.pool)
        metrics["own_class_confidence"] = statistics.fmean(confidences)
        return Outcome(metrics, {"per_class": torch.stack(per_class)}, {"pool": [f"{s}@{e}@{r}" for s, e, r in self.pool], "models": info})

    @staticmethod
    def _model(subject: Subject, context: AnalysisContext, spec: str, epochs: int, recipe: str) -> tuple[nn.Module, dict[str, Any]]:
        """Pool model ``spec`` trained for ``epochs`` epochs with ``recipe`` (:data:`RECIPES`), from its cache or
        trained and cached (``ours`` under the teachers' cache, docs/labels.md); frozen, in eval mode.
        Returns it and its facts (recipe, validation accuracy in %)."""
        view, device = subject.view, context.device
        if recipe == OURS:
            run = RunContext(device, 0, torch.Generator(device), cache_dir=context.cache_dir)
            model, meta = squeeze_teacher(view, spec, ours_recipe(epochs), run)
            if meta["teacher_trained"]:
                context.misses += 1
            else:
                context.hits += 1
        else:
            model = Recognition._official(subject, context, spec, epochs)
        for p in model.parameters():
            p.requires_grad_(False)
        val = 100.0 * float((logits(model, view.val.x.to(device)).argmax(1) == view.val.y.to(device)).float().mean())
        return model, {"recipe": recipe, "val_accuracy": val}

    @staticmethod
    def _official(subject: Subject, context: AnalysisContext, spec: str, epochs: int) -> nn.Module:
        """``spec`` trained with the official recipe, cached with the analyses' shared state; in eval mode."""
        view, device = subject.view, context.device
        learners = installed(None)

        def train() -> dict[str, torch.Tensor]:
            net = teacher_learner(spec, learners).build(view, POOL_SEED).to(device)
            steps = epochs * math.ceil(len(view.train) / OFFICIAL_BATCH)
            train_steps(net, view.train.x.to(device), view.train.y.to(device), steps, OFFICIAL_BATCH,
                        torch.Generator().manual_seed(POOL_SEED), lr=PAPER_LR, momentum=PAPER_MOMENTUM)
            return dict(net.state_dict())
        config = {"spec": spec, "epochs": epochs, "recipe": OFFICIAL, "batch": OFFICIAL_BATCH, "lr": PAPER_LR,
                  "momentum": PAPER_MOMENTUM, "seed": POOL_SEED}
        model = skeleton(spec, view, learners).to(device)
        model.load_state_dict(context.cached(subject, "recognition-pool", config, train))
        return model.eval()
