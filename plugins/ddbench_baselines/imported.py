"""The ``file`` distiller: a saved artifact scored as a cell (docs/import.md).

It distils nothing: in the cell's worker it reads an artifact that ``ddbench import`` wrote from
another code's files (or ``ddbench run --save-artifacts`` saved) and returns it, so the harness
admits, counts and scores it exactly as any method's: the budget boundary, both protocols, the
random reference and the boards apply unchanged. An artifact kept for its test accuracy (a
``*_best`` file) is scored only when the user says so (``test_selected=true``), and its row is
then footnoted.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from ddbench.budget.artifact import load
from ddbench.contracts.deviations import Deviation
from ddbench.contracts.interfaces import Artifact, Distiller, Learner, RunContext, TaskView
from ddbench.errors import ArtifactError
from ddbench.vocab import Budget


class File(Distiller):
    """The artifact at ``path`` (``.safetensors`` with its JSON sidecar), as saved."""

    name = "file"
    description = "a saved artifact (ddbench import, --save-artifacts) scored as it is: file:path=ARTIFACT.safetensors"
    in_every_suite: ClassVar[bool] = False
    official_code = ("no method code: the artifact `ddbench import` wrote from the source's own files (the preset names the "
                     "repository, commit and files read, docs/import.md)")
    deviations = (
        Deviation("selection", "the source kept the set of the iteration with the best test accuracy (a *_best file)",
                  "scored as kept: its accuracy is selected on the very split it is scored on",
                  "ours: the user imported a test-selected file and acknowledged it (test_selected=true)", "test_selected=true"),
    )

    def __init__(self, path: str = "", test_selected: bool = False):
        if not path:
            raise ValueError("give the artifact to score: file:path=ARTIFACT.safetensors")
        if not isinstance(test_selected, bool):
            raise ValueError(f"test_selected must be true or false (got {test_selected!r})")
        self.path, self.test_selected = path, test_selected

    def distill(self, task: TaskView, budget: Budget, learner: Learner, context: RunContext) -> Artifact:
        artifact = load(self.path)
        manifest = artifact.meta.get("import") or {}
        made_for = str(manifest.get("task", task.name)).partition(":")[0]
        if made_for != task.name:
            raise ArtifactError(f"{Path(self.path).name!r} was imported for task {made_for!r}, not {task.name!r}: "
                                "import it for this task (ddbench import --task).")
        if manifest.get("test_selected") and not self.test_selected:
            raise ArtifactError(f"{Path(self.path).name!r} was selected on the test split ({manifest.get('test_selected_from')}): "
                                "score it with file:path=...,test_selected=true, and its row is footnoted as such.")
        context.progress.update(1, 1)
        return Artifact(artifact.tensors, artifact.recipe, artifact.meta)
