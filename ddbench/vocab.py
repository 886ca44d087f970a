"""The words every layer shares, with no torch and nothing else of ddbench: what a budget is, the
label regimes, the evaluation protocols and the label of budget-exempt rows. Records and boards
read these without the interfaces; the interfaces and the harness give them their meaning."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ddbench.errors import BudgetError

FULL = "full"
"""The budget label of budget-exempt rows (the whole train split): a reference, never ranked."""
REGIMES = ("hard", "soft", "teacher", "soft-bank")
"""An artifact's label regime (docs/labels.md): hard labels, soft labels, a stored teacher, or a
bank of the teacher's logits on stored views."""
DISTILLATION_REGIMES = ("teacher", "soft-bank")
"""Regimes whose students train by distillation, with the task's teacher recipe, and need no ``y``
(the teacher or the bank gives the targets)."""
PROTOCOLS = ("native", "common")
"""How a board's rows train (docs/design.md §4): ``native``, each method's declared recipe over the
task's recipe (what papers report); ``common``, the task's common recipe for every row."""
PROTOCOL_FIELDS = ("epochs", "batch_size", "augment", "dsa_strategy")
"""The fields that make up a board's protocol: under ``common`` they come from the task's common
recipe and an artifact's declarations of them are set aside; its other declarations (a learned lr,
implied labels, learner options) still apply, since they are part of the artifact."""


def protocol_part(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`PROTOCOL_FIELDS` of a recipe's dictionary form (those it has)."""
    return {k: recipe[k] for k in PROTOCOL_FIELDS if k in recipe}


class Sized(Protocol):
    """What a budget needs to know of a task (a :class:`~ddbench.contracts.interfaces.TaskView` has it)."""

    # Read-only (properties): a TaskView computes input_size, and a budget never sets them.
    @property
    def name(self) -> str: ...
    @property
    def num_classes(self) -> int | None: ...
    @property
    def input_size(self) -> int: ...


@dataclass(frozen=True)
class Budget:
    """A storage budget: images per class (``ipc=10``) or stored scalars (``params=50000``).

    ``ipc`` converts to scalars as ipc x classes x (input size + 1): one input and one hard label
    per stored example (``docs/design.md`` §3, "The artifact and the budget").
    """

    kind: Literal["ipc", "params"]
    value: int

    @classmethod
    def parse(cls, text: str) -> Budget:
        kind, sep, value = str(text).partition("=")
        kind = kind.strip()
        if not sep or kind not in ("ipc", "params") or not value.strip().isdigit() or int(value) <= 0:
            raise BudgetError(f"malformed budget {text!r}: write ipc=N or params=N with a positive integer N.")
        return cls(kind, int(value))  # type: ignore[arg-type]  # kind is "ipc" or "params", checked above

    def __str__(self) -> str:
        return f"{self.kind}={self.value}"

    def scalars(self, task: Sized) -> int:
        """The budget in stored scalars for ``task``."""
        if self.kind == "params":
            return self.value
        if task.num_classes is None:
            raise BudgetError(f"budget {self} needs a classification task, but {task.name!r} is regression: use params=N.")
        return self.value * task.num_classes * (task.input_size + 1)

    def examples(self, task: Sized) -> int:
        """How many (input, label) pairs fit in the budget."""
        return self.scalars(task) // (task.input_size + 1)

    def ipc(self, task: Sized) -> int:
        """Examples per class that fit (classification), at least 1 or a :class:`BudgetError`."""
        if task.num_classes is None:
            raise BudgetError(f"task {task.name!r} has no classes: images per class do not apply; use params=N.")
        n = self.value if self.kind == "ipc" else self.examples(task) // task.num_classes
        if n < 1:
            raise BudgetError(
                f"budget {self} is below one example per class on {task.name!r} "
                f"(needs {task.num_classes * (task.input_size + 1)} scalars): raise it."
            )
        return n
