"""How dc's quick-profile initialisation was chosen (plugins/ddbench_gradmatch/dc.py, ``QUICK``):
validation accuracy on digits at ipc 1 and 10 of the quick profile with ``init=noise`` (DC's
published start) and ``init=real``, beside the random real subset, three distillation seeds x two
evaluation nets, each artifact trained with its native recipe. The test split is not read.

    python tests/benchmarks/dc_init_validation.py     # a few minutes on one CPU thread
"""
from __future__ import annotations

import statistics

import torch

from ddbench.budget.artifact import with_labels
from ddbench.contracts.interfaces import RunContext
from ddbench.contracts.recipe import evaluation_recipe
from ddbench.plugins import get_plugin_manager, instantiate
from ddbench.run.suite import load_task
from ddbench.vocab import Budget

SETTINGS = {"dc, init noise": ("dc", {"init": "noise"}), "dc, init real": ("dc", {"init": "real"}), "random": ("random", {})}


def main() -> None:
    torch.set_num_threads(1)
    manager = get_plugin_manager()
    task, view, _ = load_task(manager, "digits", {}, "quick", "cpu")  # the test split is never used here
    learner = instantiate(manager.learners.get("convnet"), {}, "quick")
    for ipc in (1, 10):
        for name, (method, options) in SETTINGS.items():
            accuracies = []
            for seed in (0, 1, 2):
                distiller = instantiate(manager.distillers.get(method), options, "quick")
                context = RunContext(torch.device("cpu"), seed, torch.Generator().manual_seed(seed), profile="quick")
                artifact = distiller.distill(view, Budget.parse(f"ipc={ipc}"), learner, context)
                recipe = evaluation_recipe(task.recipe("quick"), artifact.recipe, "native")
                artifact = with_labels(artifact, view.num_classes)
                models = [learner.build(view, s) for s in (0, 1)]
                learner.fit_ensemble(models, artifact, recipe, [torch.Generator().manual_seed(s) for s in (0, 1)])
                accuracies += [100 * float((learner.predict(m, view.val.x).argmax(1) == view.val.y).float().mean()) for m in models]
            print(f"ipc {ipc:<3} {name:<16} validation accuracy {statistics.fmean(accuracies):.1f} ± {statistics.stdev(accuracies):.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
