"""The toolkit floor: numerical building blocks shared by the built-in plugins and open to any
plugin author. Import the modules directly; each is documented in docs/toolkit.md.

- :mod:`ddbench.ops.augment`: DSA (differentiable siamese augmentation) and DC's MNIST augmentation.
- :mod:`ddbench.ops.training`: the evaluation training loop (SGD, lr schedule, augmentation) and seeded init.
- :mod:`ddbench.ops.ensemble`: K models of one architecture trained together as a vmapped ensemble.
- :mod:`ddbench.ops.classifier`: :class:`~ddbench.ops.classifier.ClassifierLearner`, the base of classifier learners.
- :mod:`ddbench.ops.subsets`: the seeded class-balanced random subset (the random baseline and reference).

Nothing here imports a plugin; plugins import from here, never from each other.
"""
