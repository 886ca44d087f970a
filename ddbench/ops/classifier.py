"""A base for classifier learners trained with the evaluation recipe (docs/methods.md §3).

A subclass sets ``name`` and implements :meth:`~ddbench.contracts.interfaces.Learner.build`; training (one
net, or the K evaluation nets together as a vmapped ensemble) and the feature embedding come from
here. Its models end in a ``classifier`` layer after ``features`` (:class:`FeaturesClassifier`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from ddbench.contracts.interfaces import Artifact, Learner, Recipe
from ddbench.vocab import REGIMES
from ddbench.ops.ensemble import LayerChain, fit_classifiers
from ddbench.ops.training import train_classifier


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
        return model.features(x)
