"""MTT's published ConvNet-3 accuracies (docs/methods.md §11), with the random-subset baseline of
DC's Table 1 beside each, for ``ddbench reproduce``. Test accuracy in %, mean ± std. MTT reports
the maximum over checkpoints; ddbench's final-epoch numbers may sit 1–2 points below. The
CIFAR-10 ipc 1 and 10 rows were made on ZCA-whitened inputs (``zca``); the MNIST and FashionMNIST
rows (FRePo's re-runs, whose preprocessing was not checked) are taken as unwhitened."""
from __future__ import annotations

from ddbench.contracts.interfaces import Published

SOURCE = "MNIST/FashionMNIST: FRePo's re-run; CIFAR-10: MTT paper; random: DC Table 1 (docs/methods.md §11)"
ROWS = {  # dataset: ipc -> (MTT mean, std, random mean, random std)
    "mnist": {1: (91.4, 0.9, 64.9, 3.5), 10: (97.3, 0.1, 95.1, 0.9), 50: (98.5, 0.1, 97.9, 0.2)},
    "fashion-mnist": {1: (75.1, 0.9, 51.4, 3.8), 10: (87.2, 0.3, 73.8, 0.7), 50: (88.3, 0.1, 82.5, 0.7)},
    "cifar10": {1: (46.3, 0.8, 14.4, 2.0), 10: (65.3, 0.7, 26.0, 1.2), 50: (71.6, 0.2, 43.4, 1.0)},
}
ZCA = {("cifar10", 1), ("cifar10", 10)}  # the authors' commands whiten these inputs (§7 table; ipc 50 does not)
PUBLISHED = tuple(Published(dataset, ipc, *row, SOURCE, zca=(dataset, ipc) in ZCA)
                  for dataset, by_ipc in ROWS.items() for ipc, row in by_ipc.items())
