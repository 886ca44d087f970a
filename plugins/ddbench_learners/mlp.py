"""A plain MLP classifier (any input shape, flattened)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ddbench.interfaces import Artifact, Learner, Recipe, TaskView
from ddbench_learners.ensemble import fit_classifiers
from ddbench_learners.training import require_classification, seeded, train_classifier


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, width: int, depth: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(depth - 1):
            layers += [nn.Linear(in_features if i == 0 else width, width), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width if depth > 1 else in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

    def layers(self) -> list[nn.Module]:
        """The layers in forward order (``forward`` is their plain chain): the ensemble's grouped path."""
        return [*self.features, self.classifier]


class MLPLearner(Learner):
    """MLP with ``depth`` linear layers of ``width`` units and ReLU (DC's MLP: depth 3, width 128).

    ``ensemble`` and ``bf16`` as for ``convnet``: vmapped evaluation ensembles, bf16 autocast on CUDA.
    """

    name = "mlp"
    description = "multi-layer perceptron classifier (flattened inputs)"

    def __init__(self, width: int = 128, depth: int = 3, ensemble: bool = True, bf16: bool = False):
        self.width, self.depth = width, depth
        self.ensemble, self.bf16 = ensemble, bf16

    def build(self, task: TaskView, seed: int) -> nn.Module:
        classes = require_classification(task, self.name)
        return seeded(seed, lambda: MLP(math.prod(task.input_shape), classes, self.width, self.depth))

    def fit(self, model: nn.Module, artifact: Artifact, recipe: Recipe, generator: torch.Generator) -> nn.Module:
        return train_classifier(model, artifact, recipe, generator, bf16=self.bf16)

    def fit_ensemble(self, models: Sequence[nn.Module], artifact: Artifact, recipe: Recipe,
                     generators: Sequence[torch.Generator]) -> str:
        """Train the K models as :meth:`fit` would, together where possible; returns how."""
        return fit_classifiers(models, artifact, recipe, generators, ensemble=self.ensemble, bf16=self.bf16)

    def embed(self, model: nn.Module, x: Tensor) -> Tensor:
        return model.features(x)
