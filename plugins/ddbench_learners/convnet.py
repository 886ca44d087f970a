"""ConvNet-3 exactly as ``docs/methods.md`` §2: [conv 3x3 -> instance norm -> ReLU -> avgpool 2] x depth,
then one linear layer. Width, depth and the norm are options; the defaults are the paper's."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ddbench.contracts import options
from ddbench.contracts.interfaces import TaskView
from ddbench.ops.classifier import ClassifierLearner, FeaturesClassifier, require_classification
from ddbench.ops.steps import seeded

NORMS = ("instancenorm", "batchnorm", "none")


def norm_layer(kind: str, width: int) -> nn.Module:
    if kind == "instancenorm":  # GroupNorm(width, width): per sample and channel, affine, no running stats
        return nn.GroupNorm(width, width, affine=True, eps=1e-5)
    if kind == "batchnorm":
        return nn.BatchNorm2d(width)
    return nn.Identity()


class ConvNet(FeaturesClassifier):
    def __init__(self, in_shape: tuple[int, ...], num_classes: int, width: int = 128, depth: int = 3, norm: str = "instancenorm"):
        super().__init__()
        channels = in_shape[0]
        layers: list[nn.Module] = []
        for i in range(depth):
            # 1-channel inputs: padding 3 in the first conv (28x28 -> 32x32), as the reference code.
            padding = 3 if (i == 0 and channels == 1) else 1
            layers += [nn.Conv2d(channels if i == 0 else width, width, 3, padding=padding), norm_layer(norm, width), nn.ReLU(),
                       nn.AvgPool2d(2, 2)]
        self.features = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():  # F from a dry forward pass (handles any input size)
            feat = self.features(torch.zeros(1, *in_shape)).shape[1]
        self.classifier = nn.Linear(feat, num_classes)


class ConvNetLearner(ClassifierLearner):
    """ConvNet-3 (default: width 128, depth 3, instance norm) trained with the recipe of §3.

    ``ensemble``: the harness's K evaluation nets train as one vmapped ensemble (§13.3; BatchNorm
    falls back to sequential training). ``bf16``: bf16 autocast while training on CUDA (§13.5).
    """

    name = "convnet"
    description = "ConvNet-3 (128 channels, instance norm, avg pool) as in DC/DSA/DM/MTT"
    quick: ClassVar[dict[str, Any]] = {"width": 32}  # CPU profile only; the spec's width 128 is the default everywhere else

    def __init__(self, width: int = 128, depth: int = 3, norm: str = "instancenorm", ensemble: bool = True, bf16: bool = False):
        options.one_of("norm", norm, NORMS)
        options.positive(width=width, depth=depth)
        options.flags(ensemble=ensemble, bf16=bf16)
        self.width, self.depth, self.norm = width, depth, norm
        self.ensemble, self.bf16 = ensemble, bf16

    def build(self, task: TaskView, seed: int) -> nn.Module:
        classes = require_classification(task, self.name)
        if len(task.input_shape) != 3:
            raise ValueError(f"convnet needs (C, H, W) inputs; task {task.name!r} has shape {task.input_shape}: use the 'mlp' learner.")
        return seeded(seed, lambda: ConvNet(task.input_shape, classes, self.width, self.depth, self.norm))
