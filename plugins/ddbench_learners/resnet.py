"""ResNets: ResNet-18 and ResNet-34 in their CIFAR form (docs/methods.md §2.1): a 3x3 stride-1 stem
with no max-pool, four stages of basic residual blocks at widths w, 2w, 4w, 8w (strides 1, 2, 2, 2),
BatchNorm after every convolution, global average pooling, one linear layer; and ResNet-18/34/50 in
their ImageNet form (He et al., 2016): a 7x7 stride-2 stem and a 3x3 stride-2 max-pool before the
stages, bottleneck blocks (expansion 4) at depth 50, with torchvision's parameter names, so that
its checkpoint files load as teachers (``teacher_weights``, docs/labels.md §5)."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ddbench.contracts import options
from ddbench.contracts.interfaces import TaskView
from ddbench.ops.classifier import ClassifierLearner, FeaturesClassifier, require_classification
from ddbench.ops.steps import seeded

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}  # basic blocks per stage
IMAGENET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}  # blocks per stage; bottlenecks at 50


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


# -- the ImageNet form, named as torchvision names it ---------------------------------------------
class Basic(nn.Module):
    """A basic block with torchvision's names: conv1/bn1, conv2/bn2 and ``downsample`` (1x1 conv, BN) where the shape changes."""

    expansion = 1

    def __init__(self, channels_in: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = shortcut(channels_in, channels * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu()
        out = self.bn2(self.conv2(out))
        return (out + (x if self.downsample is None else self.downsample(x))).relu()


class Bottleneck(nn.Module):
    """A bottleneck block (1x1, 3x3 with the stride, 1x1 to 4x the width), as torchvision's ResNet-50 (stride on the 3x3)."""

    expansion = 4

    def __init__(self, channels_in: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, channels * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.downsample = shortcut(channels_in, channels * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu()
        out = self.bn2(self.conv2(out)).relu()
        out = self.bn3(self.conv3(out))
        return (out + (x if self.downsample is None else self.downsample(x))).relu()


def shortcut(channels_in: int, channels_out: int, stride: int) -> nn.Sequential | None:
    """The projection shortcut (``downsample.0`` conv, ``downsample.1`` BN) where the shape changes, else none."""
    if stride == 1 and channels_in == channels_out:
        return None
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), nn.BatchNorm2d(channels_out))


class ImageNetResNet(nn.Module):
    """ResNet-18/34/50 in the ImageNet form: conv1 (7x7, stride 2), bn1, max-pool (3x3, stride 2),
    layer1..layer4 (widths w, 2w, 4w, 8w; strides 1, 2, 2, 2), global average pooling, ``fc``."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, depth: int = 18, width: int = 64):
        super().__init__()
        block: type[Basic] | type[Bottleneck] = Bottleneck if depth == 50 else Basic
        self.conv1 = nn.Conv2d(in_shape[0], width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels = width
        for stage, count in enumerate(IMAGENET_BLOCKS[depth]):
            blocks = []
            for i in range(count):
                blocks.append(block(channels, width * 2**stage, 2 if (stage > 0 and i == 0) else 1))
                channels = width * 2**stage * block.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(channels, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """The pooled features before ``fc``."""
        x = self.maxpool(self.bn1(self.conv1(x)).relu())
        for stage in range(1, 5):
            x = self.get_submodule(f"layer{stage}")(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.embed(x))


class ImageNetResNetLearner(ClassifierLearner):
    """ResNet-18/34/50 in the ImageNet form (``depth``, first-stage ``width`` 64), trained with the
    task's recipe like every classifier learner, one net after another (BatchNorm). Its parameter
    names are torchvision's (``conv1.weight``, ``layer1.0.bn1.running_mean``, ``fc.bias``...), so
    a torchvision checkpoint of the same depth and classes loads into it as a teacher."""

    name = "resnet-imagenet"
    description = "ResNet-18/34/50 in ImageNet form (7x7 stem, max-pool; torchvision's names), 11.7M parameters at depth 18"
    ensemble = False

    def __init__(self, depth: int = 18, width: int = 64, bf16: bool = False):
        options.one_of("depth", depth, tuple(IMAGENET_BLOCKS))
        options.positive(width=width)
        options.flags(bf16=bf16)
        self.depth, self.width, self.bf16 = depth, width, bf16

    def build(self, task: TaskView, seed: int) -> nn.Module:
        classes = require_classification(task, self.name)
        if len(task.input_shape) != 3:
            raise ValueError(f"{self.name} needs (C, H, W) inputs; task {task.name!r} has shape {task.input_shape}: use the 'mlp' learner.")
        return seeded(seed, lambda: ImageNetResNet(task.input_shape, classes, self.depth, self.width))

    def embed(self, model: nn.Module, x: Tensor) -> Tensor:
        assert isinstance(model, ImageNetResNet)
        return model.embed(x)
