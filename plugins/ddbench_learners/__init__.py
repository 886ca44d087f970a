"""Built-in classifier learners: ConvNet-3 (``convnet``), ``mlp``, ResNet-18/34 (``resnet``) and the
ImageNet-form ResNet-18/34/50 (``resnet-imagenet``), on
:class:`ddbench.ops.classifier.ClassifierLearner`."""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from ddbench.contracts.hookspecs import Command
from ddbench_learners.convnet import ConvNetLearner
from ddbench_learners.mlp import MLPLearner
from ddbench_learners.resnet import ImageNetResNetLearner, ResNetLearner


@hookimpl
def ddbench_register_learners(register: Callable[[type], None]) -> None:
    for learner in (ConvNetLearner, MLPLearner, ResNetLearner, ImageNetResNetLearner):
        register(learner)


@hookimpl
def ddbench_register_commands(register: Callable[[Command], None]) -> None:
    from ddbench_learners import speed

    register(speed.COMMAND)
