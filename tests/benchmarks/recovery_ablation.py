"""Which setting of SRe2L's recovery lowers the accuracy of the real images it starts from
(docs/methods.md §14)? Validation accuracy on digits at ipc 10, quick profile: ``sre2l`` from
real images (``init=real``) with one setting changed per row, each artifact's images distilled
from its stored teacher with the task's teacher recipe, two distillation seeds x two evaluation
nets, one thread. One step at lr 1e-6 is the real images themselves. Only the validation split
is read (the view is loaded without its test split).

    python tests/benchmarks/recovery_ablation.py    # about 20 minutes on a loaded 2-core box
"""
from __future__ import annotations

import statistics
import tempfile
from typing import Any

import torch

from ddbench.budget.artifact import with_labels
from ddbench.budget.labels import with_teacher
from ddbench.contracts.interfaces import RunContext
from ddbench.plugins import get_plugin_manager, instantiate
from ddbench.run.suite import load_view
from ddbench.vocab import Budget

ROWS: dict[str, dict[str, Any]] = {
    "the real images (1 step at lr 1e-6)": {"steps": 1, "lr": 1e-6},
    "quick profile (100 steps, lr 0.25)": {},
    "1,000 steps (official length)": {"steps": 1000},
    "lr 0.025": {"lr": 0.025},
    "lr 0.0025": {"lr": 0.0025},
    "r_bn 0 (cross-entropy only)": {"r_bn": 0.0},
    "r_bn 0.1": {"r_bn": 0.1},
    "first_bn 1": {"first_bn": 1.0},
    "jitter 0": {"jitter": 0},
    "batch 100 (10 per class)": {"batch": 100},
    "dwa (r_var 11, perturbation)": {"r_var": 11.0, "rho": 15e-3},
}


def main() -> None:
    torch.set_num_threads(1)
    manager = get_plugin_manager()
    task = instantiate(manager.tasks.get("digits"), {}, "quick")
    view = load_view(manager, "digits", {}, "quick", torch.device("cpu"))
    learner = instantiate(manager.learners.get("convnet"), {}, "quick")
    recipe = task.teacher_recipe("quick")
    cache = tempfile.mkdtemp(prefix="ddbench-recovery-ablation-")
    for name, changes in ROWS.items():
        method = "dwa" if "rho" in changes else "sre2l"
        options = {"init": "real", **changes} if method == "sre2l" else {}
        distiller = instantiate(manager.distillers.get(method), options, "quick")
        accuracies = []
        for seed in (0, 1):
            context = RunContext(torch.device("cpu"), seed, torch.Generator().manual_seed(seed), cache_dir=cache)
            artifact = distiller.distill(view, Budget.parse("ipc=10"), learner, context)
            artifact = with_labels(with_teacher(artifact, view, manager.learners, "cpu"), view.num_classes)
            models = [learner.build(view, s) for s in (0, 1)]
            learner.fit_ensemble(models, artifact, recipe.updated({"teacher": artifact.recipe["teacher"]}),
                                 [torch.Generator().manual_seed(s) for s in (0, 1)])
            accuracies += [100 * float((learner.predict(m, view.val.x).argmax(1) == view.val.y).float().mean()) for m in models]
        print(f"{name}: val {statistics.fmean(accuracies):.1f} ± {statistics.pstdev(accuracies):.1f}", flush=True)


if __name__ == "__main__":
    main()
