"""What the conformance kit checks (:data:`RULES`) and what it reports: a :class:`Failure` per
broken rule, a :class:`Case` per distillation, the :class:`ConformanceReport` and the
:class:`ConformanceError` that lists every failure."""
from __future__ import annotations

from dataclasses import dataclass, field

RULES: dict[str, str] = {
    "interface": "the class subclasses ddbench.Distiller, has a valid `name` and implements distill()",
    "importable": "the class is defined at module level of an importable module, so a cell worker can load it",
    "supports": "supports(view, learner) returns None or a reason string, and accepts at least one kit task",
    "runs": "distill() completes on every budget it can meet (a NotApplicable is a skipped case, but not on every budget)",
    "returns-artifact": "distill() returns a ddbench.Artifact of torch.Tensors",
    "on-device": "every artifact tensor is on context.device",
    "finite": "no artifact tensor holds NaN or infinite values",
    "valid": "ddbench.budget.artifact.admit accepts the artifact: its tensors validate and its recipe declares only choices",
    "within-budget": "the artifact stores no more scalars than the budget allows",
    "seeded": "the same seed gives the same artifact (bitwise on CPU), whatever the global RNG state",
    "progress": "distill() reports progress through context.progress.update() at least once",
    "read-only-task": "distill() leaves the task's train and validation tensors unchanged",
    "budget-error": "a budget the method cannot meet raises ddbench.errors.BudgetError",
    "trainable": "the task's learner trains on the artifact with the recipe the artifact declares",
    "resumes": "a distiller that declares `resumable` checkpoints through context.checkpointer(), and a run stopped after "
               "a checkpoint and run again ends with the uninterrupted run's artifact (bitwise on CPU)",
}
"""Every rule the kit checks, by the id that failure messages start with."""


@dataclass(frozen=True)
class Failure:
    """One broken rule: where it broke, what happened and how to fix it."""

    rule: str
    where: str
    detail: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.where}: {self.detail} Fix: {self.fix}"


@dataclass
class Case:
    """One distillation the kit ran: a task at a budget (``impossible`` marks the unmeetable one)."""

    task: str
    budget: str
    status: str  # ok | failed | skipped
    stored_scalars: int | None = None
    limit: int | None = None
    progress_updates: int = 0
    seconds: float = 0.0
    note: str = ""


@dataclass
class ConformanceReport:
    """What :func:`~ddbench.testing.check_distiller` ran and found."""

    distiller: str
    device: str
    cases: list[Case] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def rules_broken(self) -> list[str]:
        return sorted({f.rule for f in self.failures})

    def summary(self) -> str:
        lines = [f"distiller {self.distiller!r} on {self.device}:"]
        for c in self.cases:
            size = f", {c.stored_scalars}/{c.limit} scalars" if c.stored_scalars is not None else ""
            lines.append(f"  {c.task} {c.budget}: {c.status}{size}, {c.progress_updates} progress updates, "
                         f"{c.seconds:.2f} s{f' ({c.note})' if c.note else ''}")
        return "\n".join(lines)


class ConformanceError(AssertionError):
    """A distiller broke one or more conformance rules; ``failures`` lists them."""

    def __init__(self, report: ConformanceReport):
        self.report = report
        self.failures = report.failures
        lines = "\n".join(f"  {f}" for f in report.failures)
        super().__init__(
            f"distiller {report.distiller!r} broke {len(report.rules_broken)} conformance rule(s) "
            f"({', '.join(report.rules_broken)}) on {report.device}:\n{lines}"
        )
