"""seqmatch (plugins/ddbench_mtt/seqmatch.py): the split, its options, a staged artifact whose later
experts start from the frozen subsets, and the conformance kit."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from ddbench import Budget, RunContext
from ddbench.plugins import instantiate
from ddbench.testing import check_distiller
from ddbench.testing.tasks import tiny_classification
from ddbench_mtt.seqmatch import PUBLISHED_EXAMPLE, SeqMatch, parse_windows, split_ipc

TINY = {"iterations": 3, "num_experts": 2, "expert_group": 2, "expert_batch": 16, "prefix_epochs": 2, "syn_steps": 3,
        "batch_syn": 6, "max_start_epoch": 1, "expert_epochs": 1, "eval_epochs": None}


def test_the_published_split_and_windows():
    assert split_ipc(50, 3) == [17, 17, 16] and split_ipc(10, 2) == [5, 5]
    assert parse_windows(PUBLISHED_EXAMPLE["windows"], 3) == [20, 20, 10]
    SeqMatch(**PUBLISHED_EXAMPLE)  # every published hyperparameter is an option
    with pytest.raises(ValueError, match="one positive T\\+ per subset"):
        SeqMatch(subsets=2, windows="20,20,10")


@pytest.mark.slow
def test_a_seqmatch_artifact_is_staged_and_its_second_experts_start_from_the_first_subset(manager, digits, tmp_path):
    _, view, _ = digits
    view = dataclasses.replace(view, train=view.train.subset(torch.arange(200)))
    learner = instantiate(manager.learners.get("convnet"), {"width": 8})
    method = instantiate(SeqMatch, {**TINY, "subsets": 2, "windows": "2,1"}, "quick")
    context = RunContext(torch.device("cpu"), 0, torch.Generator().manual_seed(0), cache_dir=tmp_path)
    art = method.distill(view, Budget.parse("ipc=3"), learner, context)
    assert art.tensors["stage.end"].tolist() == [20, 30] and art.tensors["stage.lr"].shape == (2,)
    assert sorted(art.tensors) == ["stage.end", "stage.lr", "x"] and art.recipe["labels"] == "class-balanced"
    first, second = art.meta["stages"]
    assert (first["ipc"], second["ipc"], first["max_start_epoch"], second["max_start_epoch"]) == (2, 1, 2, 1)
    assert first["expert_expert_cache"] != second["expert_expert_cache"]  # keyed by the frozen subset


@pytest.mark.slow
def test_seqmatch_passes_the_conformance_kit(tmp_path):
    report = check_distiller(SeqMatch, {**TINY, "subsets": 2}, tasks=[tiny_classification(budgets=("ipc=1", "ipc=2"))],
                             cache_dir=tmp_path)
    assert report.passed
    assert [(c.budget, c.status) for c in report.cases][:2] == [("ipc=1", "skipped"), ("ipc=2", "ok")]
    assert "one stage, which is mtt's distillation" in report.cases[0].note
