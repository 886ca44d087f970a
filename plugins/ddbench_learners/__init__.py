"""Built-in learners: ConvNet-3 (``convnet``), ``mlp`` and the theory's ``two-layer`` network."""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from ddbench_learners.convnet import ConvNetLearner
from ddbench_learners.mlp import MLPLearner
from ddbench_learners.two_layer import TwoLayerLearner


@hookimpl
def ddbench_register_learners(register: Callable[[type], None]) -> None:
    for learner in (ConvNetLearner, MLPLearner, TwoLayerLearner):
        register(learner)
