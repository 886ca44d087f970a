"""How mgdd's defaults were chosen (docs/methods.md §16): validation accuracy on digits of a few
settings of its label pull ``mu``, its augmentation and its adaptation length, quick profile, three
distillation seeds x two evaluation nets, each artifact trained with its native recipe. The test
split is not read.

    python tests/benchmarks/mgdd_validation.py     # about 10 minutes on 2 CPU cores
"""
from __future__ import annotations

import statistics

import torch

from ddbench.artifact import with_labels
from ddbench.interfaces import Budget, RunContext
from ddbench.plugins import get_plugin_manager, instantiate
from ddbench.recipe import evaluation_recipe
from ddbench.suite import load_task

SETTINGS = {
    "mu 0.01, no augmentation, 20 steps": {"mu": 0.01, "augment": False, "adapt_steps": 20},
    "mu 0.01, augmentation, 100 steps": {"mu": 0.01, "augment": True, "adapt_steps": 100},
    "mu 1, no augmentation, 100 steps": {"mu": 1.0, "augment": False, "adapt_steps": 100},
    "mu 1, augmentation, 100 steps": {"mu": 1.0, "augment": True, "adapt_steps": 100},
    "mu 10, augmentation, 100 steps": {"mu": 10.0, "augment": True, "adapt_steps": 100},
}


def main() -> None:
    manager = get_plugin_manager()
    task, view, _ = load_task(manager, "digits", {}, "quick", "cpu")  # the test split is never used here
    learner = instantiate(manager.learners.get("convnet"), {}, "quick")
    for ipc in (1, 10):
        for name, options in SETTINGS.items():
            accuracies = []
            for seed in (0, 1, 2):
                distiller = instantiate(manager.distillers.get("mgdd"), options, "quick")
                context = RunContext(torch.device("cpu"), seed, torch.Generator().manual_seed(seed), profile="quick")
                artifact = distiller.distill(view, Budget.parse(f"ipc={ipc}"), learner, context)
                recipe = evaluation_recipe(task.recipe("quick"), artifact.recipe, "native")
                artifact = with_labels(artifact, view.num_classes)
                models = [learner.build(view, s) for s in (0, 1)]
                learner.fit_ensemble(models, artifact, recipe, [torch.Generator().manual_seed(s) for s in (0, 1)])
                accuracies += [100 * float((learner.predict(m, view.val.x).argmax(1) == view.val.y).float().mean()) for m in models]
            print(f"ipc {ipc:<3} {name:<38} validation accuracy {statistics.fmean(accuracies):.1f} ± {statistics.stdev(accuracies):.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
