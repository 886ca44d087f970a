"""An adversarial plugin: distillers that try to get more into the evaluation than the harness
counts, to reach the test split, or to damage other cells; and a spy learner that records what
reached the evaluation. ``tests/test_isolation.py`` runs them through the harness.

Every class is at module level: a cell worker imports distiller and learner classes by name.
"""
from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
import time
import warnings
from typing import Any, ClassVar

import torch

from ddbench import Artifact, Distiller, hookimpl
from ddbench_learners.convnet import ConvNetLearner

TEST_SIZE = 450  # rows of the digits test split (25 % of 1,797): what a test-split hunter looks for
SMUGGLED: Any = None  # a module global a distiller sets, hoping the evaluation reads it
FAST = {"epochs": 3}  # every artifact here declares a short evaluation, to keep the tests fast


def first_per_class(task, budget) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``ipc`` train examples of every class (what the honest ``first`` distiller stores)."""
    ipc = budget.ipc(task)
    idx = torch.cat([task.class_index(c)[:ipc] for c in range(task.num_classes)])
    return task.train.x[idx].clone(), task.train.y[idx].clone()


class First(Distiller):
    """Honest: the first ipc examples per class. The attacks below return the same counted tensors."""

    name = "first"

    def distill(self, task, budget, learner, context):
        x, y = first_per_class(task, budget)
        context.progress.update(1, 1)
        return Artifact({"x": x, "y": y}, recipe=FAST)


class Liar(torch.Tensor):
    """A tensor subclass that reports one element, whatever it holds."""

    def numel(self) -> int:
        return 1


class LyingTensor(Distiller):
    """The whole train split inside a subclass whose ``numel`` says 1."""

    name = "lying-tensor"

    def distill(self, task, budget, learner, context):
        return Artifact({"x": task.train.x.clone().as_subclass(Liar), "y": task.train.y.clone().as_subclass(Liar)}, recipe=FAST)


class Packed(Distiller):
    """Smuggles more values than counted: ``mode`` sparse (uncoalesced duplicates hold the whole
    train split in a small dense shape), view (a small view over the whole train storage) or
    complex (two reals per counted element)."""

    name = "packed"

    def __init__(self, mode: str = "view"):
        self.mode = mode

    def distill(self, task, budget, learner, context):
        x, y = first_per_class(task, budget)
        if self.mode == "view":
            whole = task.train.x.clone()
            whole[: len(x)] = x
            x = whole[: len(x)]  # the honest values, in a view whose storage holds every train image
        elif self.mode == "sparse":
            n, (c, h, w) = len(task.train), task.input_shape
            pixel = torch.arange(c * h * w)
            rows = (torch.arange(n) % len(x)).repeat_interleave(c * h * w)
            index = torch.stack([rows, (pixel // (h * w)).repeat(n), (pixel // w % h).repeat(n), (pixel % w).repeat(n)])
            x = torch.sparse_coo_tensor(index, task.train.x.reshape(-1), (len(x), c, h, w))  # n images in len(x) rows
        elif self.mode == "complex":
            x = torch.complex(x.double(), x.double())
        elif self.mode == "huge":
            x = torch.zeros(2**21)  # 8 MB for a budget of 650 scalars
        return Artifact({"x": x, "y": y}, recipe=FAST)


class Mistake(Distiller):
    """Honest mistakes a plugin author makes (``mode``): int8-x, float64-x, labels 10..19 for ten
    classes, an empty artifact, no x, no rows, or an error with a 35 kB message (a long traceback)."""

    name = "mistake"

    def __init__(self, mode: str = "int8-x"):
        self.mode = mode

    def distill(self, task, budget, learner, context):
        x, y = first_per_class(task, budget)
        tensors = {"x": x, "y": y}
        if self.mode == "int8-x":
            tensors["x"] = x.to(torch.int8)
        elif self.mode == "float64-x":
            tensors["x"] = x.double()
        elif self.mode == "labels":
            tensors["y"] = y + task.num_classes
        elif self.mode == "empty":
            tensors = {}
        elif self.mode == "no-x":
            tensors = {"inputs": x, "y": y}
        elif self.mode == "no-rows":
            tensors = {"x": x[:0], "y": y[:0]}
        elif self.mode == "long-error":
            raise RuntimeError("failed with a long message\n" + "0.1234 " * 5000)
        return Artifact(tensors, recipe=FAST)


class Tamper(Distiller):
    """Returns the honest tensors but tries other channels to the evaluation (``mode``): the learner
    object, meta, attributes on tensors, module globals, the recipe."""

    name = "tamper"

    def __init__(self, mode: str = "learner"):
        self.mode = mode

    def distill(self, task, budget, learner, context):
        global SMUGGLED
        x, y = first_per_class(task, budget)
        recipe: dict[str, Any] = dict(FAST)
        meta: dict[str, Any] = {}
        if self.mode == "learner":
            learner.tampered = True
            learner.width = 8
        elif self.mode == "meta":
            meta["train_x"] = task.train.x[:2].tolist()
        elif self.mode == "attribute":
            x.smuggled = task.train.x
        elif self.mode == "global":
            SMUGGLED = task.train.x
        else:  # a recipe override such as lr=0.05, lr=nan, augment=bogus
            key, _, value = self.mode.partition("=")
            recipe[key] = float(value) if key == "lr" else value
        return Artifact({"x": x, "y": y}, recipe=recipe, meta=meta)


def is_test_split(value: Any) -> bool:
    """A tensor, or a dataclass with a tensor field ``y`` (a Split), with the digits test split's row count."""
    if isinstance(value, torch.Tensor):
        return value.dim() >= 1 and value.shape[0] == TEST_SIZE
    if "y" not in getattr(type(value), "__dataclass_fields__", {}):
        return False
    return is_test_split(value.y)


def reachable_test_split() -> str:
    """Where a distiller finds the test split in its own process ('' when nowhere): among every
    object the garbage collector tracks, or in the locals of a calling frame (the harness's)."""
    with warnings.catch_warnings():  # isinstance() on some of torch's deprecated objects warns
        warnings.simplefilter("ignore")
        if any(is_test_split(obj) for obj in gc.get_objects()):
            return "gc.get_objects()"
    frame = sys._getframe()
    while frame is not None:
        for value in frame.f_locals.values():
            if is_test_split(value) or (isinstance(value, tuple) and any(is_test_split(v) for v in value)):
                return f"the frame of {frame.f_code.co_name}"
        frame = frame.f_back
    return ""


class Hunter(Distiller):
    """Looks for the test split in its own process, having read the view of task ``source`` first
    if one is named (:meth:`RunContext.source_view`), and fails the cell when it finds it."""

    name = "test-hunter"

    def __init__(self, source: str = ""):
        self.source = source

    def distill(self, task, budget, learner, context):
        source = context.source_view(self.source) if self.source else None
        if source is not None and (type(source).__name__ != "TaskView" or hasattr(source, "test")):
            raise RuntimeError(f"the view of {self.source!r} is a {type(source).__name__} with a test split")
        found = reachable_test_split()
        if found:
            raise RuntimeError(f"the test split is reachable through {found}")
        x, y = first_per_class(task, budget)
        return Artifact({"x": x, "y": y}, recipe=FAST)


class Vandal(Distiller):
    """Damages shared state (``mode``): inplace (zeroes the train split), dtype (float64 default),
    nograd (gradients off globally), then returns an honest artifact."""

    name = "vandal"

    def __init__(self, mode: str = "inplace"):
        self.mode = mode

    def distill(self, task, budget, learner, context):
        x, y = first_per_class(task, budget)
        if self.mode == "inplace":
            task.train.x.zero_()
            task.val.x.zero_()
        elif self.mode == "dtype":
            torch.set_default_dtype(torch.float64)
        elif self.mode == "nograd":
            torch.set_grad_enabled(False)
        return Artifact({"x": x, "y": y}, recipe=FAST)


class Misbehave(Distiller):
    """Ends its process or ignores limits (``mode``): sleep (ignores should_stop), exit (sys.exit),
    interrupt (raises KeyboardInterrupt), hard-exit (os._exit), segfault, sigkill, hog (allocates
    and touches about 400 MB), or polite (sleeps until should_stop, then stops early)."""

    name = "misbehave"

    def __init__(self, mode: str = "sleep", seconds: float = 30.0):
        self.mode, self.seconds = mode, seconds

    def distill(self, task, budget, learner, context):
        if self.mode == "sleep":
            time.sleep(self.seconds)
        elif self.mode == "polite":
            while not context.should_stop():
                time.sleep(0.05)
        elif self.mode == "exit":
            sys.exit(3)
        elif self.mode == "interrupt":
            raise KeyboardInterrupt
        elif self.mode == "hard-exit":
            os._exit(7)
        elif self.mode == "segfault":
            ctypes.string_at(0)
        elif self.mode == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.mode == "hog":
            hog = torch.ones(100 * 2**20)  # 400 MB, touched
            hog.add_(1)
            del hog
        x, y = first_per_class(task, budget)
        return Artifact({"x": x, "y": y}, recipe=FAST, meta={"stopped_early": self.mode == "polite"})


class Spy(ConvNetLearner):
    """ConvNet-3 that records what reached its training (the evaluation runs in the harness process)."""

    name = "spy"
    seen: ClassVar[list[dict[str, Any]]] = []

    def fit_ensemble(self, models, artifact, recipe, generators):
        x = artifact.tensors["x"]
        Spy.seen.append({
            "tampered": getattr(self, "tampered", False), "width": self.width, "meta": dict(artifact.meta),
            "attribute": hasattr(x, "smuggled"), "global": SMUGGLED is not None,
            "types": {k: type(t).__name__ for k, t in artifact.tensors.items()},
            "storage": {k: (t.untyped_storage().nbytes(), t.numel() * t.element_size()) for k, t in artifact.tensors.items()},
            "recipe": recipe,
        })
        return super().fit_ensemble(models, artifact, recipe, generators)


@hookimpl
def ddbench_register_distillers(register) -> None:
    for cls in (First, LyingTensor, Packed, Mistake, Tamper, Hunter, Vandal, Misbehave):
        register(cls)


@hookimpl
def ddbench_register_learners(register) -> None:
    register(Spy)
