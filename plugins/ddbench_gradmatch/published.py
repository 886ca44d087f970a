"""The published ConvNet-3 accuracies of DC, DSA and DM (docs/methods.md §11), with the random-subset
baseline of DC's Table 1 beside each, for ``ddbench reproduce``. Test accuracy in %, mean ± std;
the papers evaluate the final set over 100 nets (DM: 25)."""
from __future__ import annotations

from ddbench.contracts.interfaces import Published

RANDOM = {  # DC paper, Table 1 (CIFAR-10 means as quoted by later papers; docs/methods.md §11)
    "mnist": {1: (64.9, 3.5), 10: (95.1, 0.9), 50: (97.9, 0.2)},
    "fashion-mnist": {1: (51.4, 3.8), 10: (73.8, 0.7), 50: (82.5, 0.7)},
    "cifar10": {1: (14.4, 2.0), 10: (26.0, 1.2), 50: (43.4, 1.0)},
}
SOURCES = {
    "dc": "DC README means, later papers' stds; random: DC Table 1 (docs/methods.md §11)",
    "dsa": "DSA means from the DC/DSA README, later papers' stds; random: DC Table 1 (docs/methods.md §11)",
    "dm": "DM: CIFAR-10 from the DM paper, MNIST/FashionMNIST as quoted by CAFE and DataDAM; random: DC Table 1 (docs/methods.md §11)",
}
TABLE = {
    "dc": {"mnist": {1: (91.7, 0.5), 10: (97.4, 0.2), 50: (98.8, 0.2)},
           "fashion-mnist": {1: (70.5, 0.6), 10: (82.3, 0.4), 50: (83.6, 0.4)},
           "cifar10": {1: (28.3, 0.5), 10: (44.9, 0.5), 50: (53.9, 0.5)}},
    "dsa": {"mnist": {1: (88.7, 0.6), 10: (97.8, 0.1), 50: (99.2, 0.1)},
            "fashion-mnist": {1: (70.6, 0.6), 10: (84.6, 0.3), 50: (88.7, 0.2)},
            "cifar10": {1: (28.8, 0.7), 10: (52.1, 0.5), 50: (60.6, 0.5)}},
    "dm": {"mnist": {1: (89.7, 0.6), 10: (97.5, 0.1), 50: (98.6, 0.1)},
           "fashion-mnist": {1: (70.7, 0.6), 10: (83.5, 0.3), 50: (88.1, 0.6)},
           "cifar10": {1: (26.0, 0.8), 10: (48.9, 0.6), 50: (63.0, 0.4)}},
}


def published_rows(method: str) -> tuple[Published, ...]:
    """The rows of ``method`` (dc, dsa, dm)."""
    return tuple(Published(dataset, ipc, acc, std, *RANDOM[dataset][ipc], SOURCES[method])
                 for dataset, by_ipc in TABLE[method].items() for ipc, (acc, std) in by_ipc.items())
