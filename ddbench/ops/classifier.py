"""A base for classifier learners trained with the evaluation recipe (docs/methods.md §3).

A subclass sets ``name`` and implements :meth:`~ddbench.contracts.interfaces.Learner.build`; training (one
net, or the K evaluation nets together as a vmapped ensemble) and the feature embedding come from
here. Its models end in a ``classifier`` layer after ``features`` (:class:`FeaturesClassifier`).

This is where the two training engines meet: :func:`fit_classifiers` trains the K nets with the
vmapped engine (:mod:`ddbench.ops.ensemble`) where it can, else one by one with the sequential
engine (:mod:`ddbench.ops.training`). Neither engine imports the other or this module.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from ddbench.budget import labels
from ddbench.contracts.interfaces import Artifact, Learner, TaskView
from ddbench.contracts.recipe import Recipe
from ddbench.ops.ensemble import LayerChain, train_ensemble, vmap_unsupported
from ddbench.ops.steps import stage_parts
from ddbench.ops.training import train_classifier
from ddbench.vocab import REGIMES


def require_classification(task: TaskView, learner: str) -> int:
    """The task's number of classes; a one-line error naming ``learner`` when the task is a regression."""
    if task.num_classes is None:
        raise ValueError(f"learner {learner!r} is a classifier; task {task.name!r} is regression: "
                         "use a regression learner (see `ddbench ls learners`).")
    return task.num_classes


def fit_classifiers(models: Sequence[nn.Module], artifact: Artifact, recipe: Recipe,
                    generators: Sequence[torch.Generator], *, ensemble: bool = True, bf16: bool = False) -> str:
    """Train ``models`` on the artifact as ``train_classifier`` would one by one, as one vmapped
    ensemble where possible; returns how they were trained, e.g. ``"ensemble"`` or
    ``"sequential: BatchNorm2d ..."`` (the reason for the fallback)."""
    device = artifact.x.device
    note = " (bf16 ignored on cpu)" if bf16 and device.type != "cuda" else (" bf16" if bf16 else "")
    kind = labels.regime(artifact.tensors, artifact.recipe)
    reason = ("ensemble=False" if not ensemble else "soft-bank label regime" if kind == "soft-bank"
              else f"{recipe.optimizer} {recipe.schedule}"
              if recipe.optimizer not in ("sgd", "adamw") or recipe.schedule not in ("step", "cosine")
              else vmap_unsupported(models))
    if reason is not None:
        for model, generator in zip(models, generators, strict=True):
            train_classifier(model, artifact, recipe, generator, bf16=bf16)
        return f"sequential: {reason}{note}"
    for part, lr in stage_parts(artifact, recipe):  # one part unless the artifact is staged
        train_ensemble(models, part.x, None if kind == "teacher" else part.y, recipe, generators, lr=lr, bf16=bf16,
                       teacher=part.teacher if kind == "teacher" else None)
    return f"ensemble{note}"


class FeaturesClassifier(LayerChain):
    """``features`` (a ``Sequential``) then one ``classifier`` layer; the embedding is ``features(x)``."""

    features: nn.Sequential
    classifier: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

    def layers(self) -> list[nn.Module]:
        return [*self.features, self.classifier]


class ClassifierLearner(Learner):
    """Training with the recipe (its optimiser and schedule, augmentation) in every label regime
    (cross-entropy on hard or soft labels, distillation from a stored teacher or a soft-label bank;
    docs/labels.md), K nets at once where they can.

    ``ensemble``: train the harness's K evaluation nets as one vmapped ensemble where the model
    allows it (docs/methods.md §13.3; BatchNorm falls back to sequential training). ``bf16``: bf16
    autocast while training on CUDA (§13.5). Subclasses store both as attributes.
    """

    supports_embedding: ClassVar[bool] = True
    label_regimes: ClassVar[tuple[str, ...]] = REGIMES
    trains_stages: ClassVar[bool] = True
    ensemble: bool = True
    bf16: bool = False

    def fit(self, model: nn.Module, artifact: Artifact, recipe: Recipe, generator: torch.Generator) -> nn.Module:
        return train_classifier(model, artifact, recipe, generator, bf16=self.bf16)

    def fit_ensemble(self, models: Sequence[nn.Module], artifact: Artifact, recipe: Recipe,
                     generators: Sequence[torch.Generator]) -> str:
        return fit_classifiers(models, artifact, recipe, generators, ensemble=self.ensemble, bf16=self.bf16)

    def embed(self, model: nn.Module, x: Tensor) -> Tensor:
        """The flattened feature before the last linear layer (DM's embedding, herding's features)."""
        return model.get_submodule("features")(x)
