"""How mgdd's defaults were chosen (docs/methods.md §16): validation accuracy on digits of its
meta-training (none, multi-task pretraining, Reptile at a few sizes, Reptile on the target itself)
and its adaptation length, quick profile, three distillation seeds x two evaluation nets, each
artifact trained with its native recipe, one thread. The source is mnist5k unless a row says
otherwise; "reptile E x K" is E episodes of K inner steps. Only the validation split is read (the
digits view is loaded without its test split). Each row meta-trains once, cold, into a fresh cache.

    python tests/benchmarks/mgdd_validation.py     # about 30 minutes on a loaded 2-core box
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from ddbench.budget.artifact import with_labels
from ddbench.contracts.interfaces import RunContext
from ddbench.contracts.recipe import evaluation_recipe
from ddbench.plugins import get_plugin_manager, instantiate
from ddbench.run.suite import load_view, view_opener
from ddbench.vocab import Budget

SETTINGS: dict[str, dict[str, Any]] = {  # meta_steps: generator steps (Reptile: outer steps x inner_steps)
    "no meta-training, adapt 10": {"meta_steps": 0, "adapt_steps": 10},
    "no meta-training, adapt 100": {"meta_steps": 0, "adapt_steps": 100},
    "pretrain 50, adapt 10": {"meta": "pretrain", "meta_steps": 50, "adapt_steps": 10},
    "pretrain 50, adapt 100 (the old default)": {"meta": "pretrain", "meta_steps": 50, "adapt_steps": 100},
    "reptile 10 x 5, adapt 5": {"meta_steps": 50, "inner_steps": 5, "adapt_steps": 5},
    "reptile 10 x 5, adapt 100": {"meta_steps": 50, "inner_steps": 5, "adapt_steps": 100},
    "reptile 5 x 10, adapt 10": {"meta_steps": 50, "inner_steps": 10, "adapt_steps": 10},
    "reptile 5 x 10, adapt 100 (default)": {"meta_steps": 50, "inner_steps": 10, "adapt_steps": 100},
    "reptile 10 x 10, adapt 10": {"meta_steps": 100, "inner_steps": 10, "adapt_steps": 10},
    "reptile 10 x 10, adapt 100": {"meta_steps": 100, "inner_steps": 10, "adapt_steps": 100},
    "reptile 10 x 10, meta_lr 0.5, adapt 10": {"meta_steps": 100, "inner_steps": 10, "meta_lr": 0.5, "adapt_steps": 10},
    "reptile 20 x 10, adapt 10": {"meta_steps": 200, "inner_steps": 10, "adapt_steps": 10},
    "reptile 10 x 20, adapt 20": {"meta_steps": 200, "inner_steps": 20, "adapt_steps": 20},
    "reptile 10 x 10 on digits itself (source=self), adapt 10": {"source": "self", "meta_steps": 100, "inner_steps": 10,
                                                                    "adapt_steps": 10},
}


def main() -> None:
    torch.set_num_threads(1)
    manager = get_plugin_manager()
    task = instantiate(manager.tasks.get("digits"), {}, "quick")  # for its recipe only
    view = load_view(manager, "digits", {}, "quick", "cpu")  # train and validation: the test split is dropped
    learner = instantiate(manager.learners.get("convnet"), {}, "quick")
    print("| setting | meta-training s (cold) | adaptation s | ipc 1 val acc | ipc 10 val acc |\n|---|---|---|---|---|", flush=True)
    for name, options in SETTINGS.items():
        with tempfile.TemporaryDirectory() as cache:
            meta_s, adapt_s, cells = 0.0, [], []
            for ipc in (1, 10):
                accuracies = []
                for seed in (0, 1, 2):
                    distiller = instantiate(manager.distillers.get("mgdd"), options, "quick")
                    context = RunContext(torch.device("cpu"), seed, torch.Generator().manual_seed(seed), profile="quick",
                                         cache_dir=Path(cache), open_view=view_opener(manager, "quick", "cpu"))
                    artifact = distiller.distill(view, Budget.parse(f"ipc={ipc}"), learner, context)
                    if not artifact.meta["meta_cached"]:
                        meta_s = artifact.meta["meta_s"]
                    adapt_s.append(artifact.meta["adapt_s"])
                    recipe = evaluation_recipe(task.recipe("quick"), artifact.recipe, "native")
                    artifact = with_labels(artifact, view.num_classes)
                    models = [learner.build(view, s) for s in (0, 1)]
                    learner.fit_ensemble(models, artifact, recipe, [torch.Generator().manual_seed(s) for s in (0, 1)])
                    accuracies += [100 * float((learner.predict(m, view.val.x).argmax(1) == view.val.y).float().mean()) for m in models]
                cells.append(f"{statistics.fmean(accuracies):.1f} ± {statistics.stdev(accuracies):.1f}")
        print(f"| {name} | {meta_s:.1f} | {statistics.fmean(adapt_s):.1f} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
