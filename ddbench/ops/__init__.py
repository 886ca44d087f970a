"""The toolkit floor: numerical building blocks shared by the built-in plugins and open to any
plugin author. Import the modules directly; each is documented in docs/toolkit.md.

- :mod:`ddbench.ops.augment`: DSA (differentiable siamese augmentation) and DC's MNIST augmentation.
- :mod:`ddbench.ops.steps`: what the two training engines share (seeds, draws, stages, schedule, optimiser steps).
- :mod:`ddbench.ops.training`: the sequential engine, one evaluation net at a time.
- :mod:`ddbench.ops.ensemble`: the vmapped engine, K models of one architecture trained together.
- :mod:`ddbench.ops.classifier`: :class:`~ddbench.ops.classifier.ClassifierLearner`, the base of classifier
  learners, and ``fit_classifiers``, which chooses an engine.
- :mod:`ddbench.ops.subsets`: the seeded class-balanced random subset (the random baseline and reference).

Nothing here imports a plugin; plugins import from here, never from each other.
"""
