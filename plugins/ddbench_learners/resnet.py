"""ResNet-18 and ResNet-34 in their CIFAR form (docs/methods.md §2.1): a 3x3 stride-1 stem with no
max-pool, four stages of basic residual blocks at widths w, 2w, 4w, 8w (strides 1, 2, 2, 2),
BatchNorm after every convolution, global average pooling, one linear layer."""
from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from ddbench.contracts import options
from ddbench.contracts.interfaces import TaskView
from ddbench.ops.classifier import ClassifierLearner, FeaturesClassifier, require_classification
from ddbench.ops.steps import seeded

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}  # basic blocks per stage


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut, or a 1x1 conv-BN one where the shape changes."""

    def __init__(self, channels_in: int, channels: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(channels_in, channels, 1, stride, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        return (self.body(x) + self.shortcut(x)).relu()


class ResNet(FeaturesClassifier):
    def __init__(self, in_shape: tuple[int, ...], num_classes: int, depth: int = 18, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_shape[0], width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
        for stage, count in enumerate(BLOCKS[depth]):
            out = width * 2**stage
            for i in range(count):
                layers.append(BasicBlock(channels, out, 2 if (stage > 0 and i == 0) else 1))
                channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)


class ResNetLearner(ClassifierLearner):
    """ResNet-18/34, CIFAR form (``depth`` 18 or 34, first-stage ``width`` 64), trained with the
    task's recipe like every classifier learner. BatchNorm: the K evaluation nets train one after
    another, not as a vmapped ensemble (docs/methods.md §13.3).
    """

    name = "resnet"
    description = "ResNet-18/34 in CIFAR form (3x3 stem, no max-pool, BatchNorm), 11.2M parameters at depth 18"
    quick: ClassVar[dict[str, Any]] = {"width": 16}  # CPU profile only; the published width 64 is the default everywhere else
    ensemble = False  # BatchNorm: the vmapped ensemble does not apply

    def __init__(self, depth: int = 18, width: int = 64, bf16: bool = False):
        options.one_of("depth", depth, tuple(BLOCKS))
        options.positive(width=width)
        options.flags(bf16=bf16)
        self.depth, self.width = depth, width
        self.bf16 = bf16

    def build(self, task: TaskView, seed: int) -> nn.Module:
        classes = require_classification(task, self.name)
        if len(task.input_shape) != 3:
            raise ValueError(f"resnet needs (C, H, W) inputs; task {task.name!r} has shape {task.input_shape}: use the 'mlp' learner.")
        return seeded(seed, lambda: ResNet(task.input_shape, classes, self.depth, self.width))
