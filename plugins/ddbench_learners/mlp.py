"""A plain MLP classifier (any input shape, flattened)."""
from __future__ import annotations

import math

from torch import nn

from ddbench.contracts import options
from ddbench.contracts.interfaces import TaskView
from ddbench.ops.classifier import ClassifierLearner, FeaturesClassifier, require_classification
from ddbench.ops.steps import seeded


class MLP(FeaturesClassifier):
    def __init__(self, in_features: int, num_classes: int, width: int, depth: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(depth - 1):
            layers += [nn.Linear(in_features if i == 0 else width, width), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width if depth > 1 else in_features, num_classes)


class MLPLearner(ClassifierLearner):
    """MLP with ``depth`` linear layers of ``width`` units and ReLU (DC's MLP: depth 3, width 128).

    ``ensemble`` and ``bf16`` as for ``convnet``: vmapped evaluation ensembles, bf16 autocast on CUDA.
    """

    name = "mlp"
    description = "multi-layer perceptron classifier (flattened inputs)"

    def __init__(self, width: int = 128, depth: int = 3, ensemble: bool = True, bf16: bool = False):
        options.positive(width=width, depth=depth)
        options.flags(ensemble=ensemble, bf16=bf16)
        self.width, self.depth = width, depth
        self.ensemble, self.bf16 = ensemble, bf16

    def build(self, task: TaskView, seed: int) -> nn.Module:
        classes = require_classification(task, self.name)
        return seeded(seed, lambda: MLP(math.prod(task.input_shape), classes, self.width, self.depth))
