"""seqmatch (plugins/ddbench_mtt/seqmatch.py): the split, its options, a staged artifact whose later
experts start from the frozen subsets, the conformance kit, and step checks against our own
transcription of the official code (shqii1j/seqmatch @ 9d7efad, seqmatch-mtt/run.sh and
distill_eval_new.py): the start-epoch window, each subset's initial step size and the student's
minibatches."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from ddbench import Budget, RunContext
from ddbench.contracts.deviations import doc_block
from ddbench.errors import SuiteError
from ddbench.plugins import instantiate
from ddbench.testing import check_distiller
from ddbench.testing.tasks import tiny_classification
from ddbench_mtt import distiller as mtt_module
from ddbench_mtt.distiller import MTT
from ddbench_mtt.seqmatch import PUBLISHED_EXAMPLE, SeqMatch, Stage, parse_windows, split_ipc
from ddbench_mtt.unroll import draw_schedule

TINY = {"iterations": 3, "num_experts": 2, "expert_group": 2, "expert_batch": 16, "prefix_epochs": 2, "syn_steps": 3,
        "batch_syn": 6, "max_start_epoch": 1, "expert_epochs": 1, "eval_epochs": None}
# run.sh, as we read it: three distill_eval_new.py calls at --ipc 17, 17, 16 with --intervals 0-20, 0-20, 0-10
# and --lr_teacher 0.001, 0.01, 0.01; --batch_syn unset, so batch_syn = num_classes * ipc of the call.
RUN_SH = [(17, (0, 20), 0.001), (17, (0, 20), 0.01), (16, (0, 10), 0.01)]


def official_starts(start: int, end: int, m: int) -> set[int]:
    """What np.random.randint(start, end - expert_epochs) can return."""
    return set(range(start, end - m))


def official_chunks(n: int, steps: int, batch: int, generator: torch.Generator) -> list[list[int]]:
    """The rows of each student step: a permutation of frozen ∪ new cut into batch-sized pieces,
    used from the last piece back, a new permutation once all are used."""
    pieces: list[torch.Tensor] = []
    rows = []
    for _ in range(steps):
        if not pieces:
            pieces = list(torch.split(torch.randperm(n, generator=generator), batch))
        rows.append(pieces.pop().tolist())
    return rows


def test_the_published_split_and_windows():
    assert split_ipc(50, 3) == [17, 17, 16] and split_ipc(10, 2) == [5, 5]
    assert parse_windows(PUBLISHED_EXAMPLE["windows"], 3, 2) == [(0, 20), (0, 20), (0, 10)]
    assert parse_windows("0-20/0-20/0-10", 3, 2) == [(0, 20), (0, 20), (0, 10)]  # the command line's form
    SeqMatch(**PUBLISHED_EXAMPLE)  # every published hyperparameter is an option


@pytest.mark.parametrize("options, message", [
    ({"windows": "30-20"}, "interval 30-20 ends before it starts"),
    ({"windows": "0-20,0-10"}, "one start-end interval per subset (3), got 2"),
    ({"windows": "0-20,0-20,0-10,0-10"}, "one start-end interval per subset (3), got 4"),
    ({"windows": "0-2,0-20,0-10"}, "interval 0-2 is too short for expert_epochs=2"),
    ({"windows": "0-20,0-3,0-10", "expert_epochs": 3}, "interval 0-3 is too short for expert_epochs=3"),
    ({"windows": "20,20,10"}, "start-end epoch intervals"),
    ({"windows": "0-x,0-20,0-10"}, "start-end epoch intervals"),
    ({"lr_inits": "0.001,0.01"}, "lr_inits must be one positive step size, or one per subset (3)"),
    ({"lr_inits": "-0.01"}, "lr_inits must be one positive step size"),
])
def test_bad_windows_and_rates_are_one_line_errors(options, message):
    with pytest.raises(SuiteError) as error:
        instantiate(SeqMatch, options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_plan_of_the_published_example_is_run_sh(digits):
    _, view, _ = digits
    cifar = dataclasses.replace(view, name="cifar10")
    cfg, stages = SeqMatch().plan(cifar, 50)
    assert stages == [Stage(ipc, window, lr, 10 * ipc) for ipc, window, lr in RUN_SH]
    assert (cfg["lr_img"], cfg["lr_lr"], cfg["syn_steps"], cfg["expert_epochs"]) == (100.0, 1e-5, 30, 2)
    # elsewhere [ours]: MTT's §7 row for every subset, each window 0-(T+ + M), so starts in [0, T+)
    cfg, stages = SeqMatch().plan(view, 10)
    assert [(s.window, s.lr_init, s.batch_syn) for s in stages] == [((0, 22), 0.001, 40), ((0, 22), 0.001, 30), ((0, 22), 0.001, 30)]
    _, stages = SeqMatch(lr_inits=0.02, batch_syn=7).plan(cifar, 50)  # one rate for all; an explicit batch for all
    assert [(s.lr_init, s.batch_syn) for s in stages] == [(0.02, 7)] * 3


def staged_run(manager, view, options, ipc, monkeypatch):
    """Distil with seqmatch on ``view`` at ``ipc`` with random expert buffers (no expert training),
    recording the epochs each stage's experts reach, every student schedule and every stage's match.
    One thread: these tiny ops run many times slower on two threads of a busy machine."""
    torch.set_num_threads(1)
    learner = instantiate(manager.learners.get("convnet"), {"width": 4})
    method = instantiate(SeqMatch, {"num_experts": 2, "eval_epochs": None, **options})
    epochs, schedules, stages = [], [], []

    def experts(task, learner, model, count, context, start=None, key=None, report=None):
        epochs.append(count)
        g = torch.Generator().manual_seed(count)
        return model.flatten() + 0.01 * torch.randn(2, count + 1, model.size, generator=g), {"expert_cache": str(count)}

    def schedule(n, steps, batch, *args):
        schedules.append((n, batch, draw_schedule(n, steps, batch, *args)))
        return schedules[-1][2]

    real_match = method.match

    def match(task, cfg, model, buffer, images, labels, context, frozen=None, **kw):
        before = None if frozen is None else frozen[0].clone()
        out = real_match(task, cfg, model, buffer, images, labels, context, frozen=frozen, **kw)
        stages.append({"frozen": (before, None if frozen is None else frozen[0]), "init": images.clone(), "out": out})
        return out

    monkeypatch.setattr(method, "experts", experts)
    monkeypatch.setattr(method, "match", match)
    monkeypatch.setattr(mtt_module, "draw_schedule", schedule)
    context = RunContext(torch.device("cpu"), 0, torch.Generator().manual_seed(0))
    return method.distill(view, Budget.parse(f"ipc={ipc}"), learner, context), epochs, schedules, stages


@pytest.mark.slow
def test_start_epochs_are_drawn_from_start_to_end_minus_m(manager, digits, monkeypatch):
    _, view, _ = digits
    art, epochs, _, _ = staged_run(manager, view, {"subsets": 2, "windows": "3-9,0-4", "expert_epochs": 2, "iterations": 120,
                                          "syn_steps": 1}, 4, monkeypatch)
    drawn = [set(run["start_epochs"]) for run in art.meta["stages"]]
    assert drawn == [official_starts(3, 9, 2), official_starts(0, 4, 2)] == [{3, 4, 5, 6}, {0, 1}]
    assert epochs == [8, 3]  # each subset's experts reach epoch end - 1, the last target a draw can ask for


def test_each_subset_starts_from_its_own_step_size_and_trains_on_minibatches_of_the_union(manager, digits, monkeypatch):
    _, view, _ = digits
    cifar = dataclasses.replace(view, name="cifar10", info={**view.info, "zca": True})
    art, epochs, schedules, stages = staged_run(manager, cifar, {"iterations": 2, "syn_steps": 4, "lr_lr": 0.0}, 50, monkeypatch)
    assert art.tensors["stage.lr"].tolist() == pytest.approx([lr for _, _, lr in RUN_SH])  # lr_lr 0: alpha stays alpha_0
    assert art.meta["zca"] is True and epochs == [19, 19, 9]
    # per stage: the student's rows are permutations of frozen ∪ new in pieces of classes x ipc_k
    unions, batch = [170, 340, 500], [170, 170, 160]
    assert [(n, b) for n, b, _ in schedules] == [(n, b) for n, b in zip(unions, batch) for _ in range(2)]
    for n, b, steps in schedules:
        g = torch.Generator().manual_seed(0)
        assert [len(s.index) for s in steps] == [len(rows) for rows in official_chunks(n, 4, b, g)]
    assert [len(s.index) for s in schedules[-1][2]] == [20, 160, 160, 160]  # the short piece comes first
    assert any((s.index < 170).any() for s in schedules[2][2])  # stage 2 trains on frozen rows too
    x, ends = art.tensors["x"], [0, *art.tensors["stage.end"].tolist()]
    for k, stage in enumerate(stages):
        new = stage["out"][0]
        assert torch.equal(x[ends[k] : ends[k + 1]], new) and not torch.allclose(new, stage["init"])  # new rows learn
        if k:  # frozen rows leave the stage as they entered it
            before, after = stage["frozen"]
            assert torch.equal(before, after) and torch.equal(after, x[: ends[k]])


@pytest.mark.parametrize("cls", [MTT, SeqMatch])
def test_methods_md_shows_the_declared_deviations(cls):
    text = (Path(__file__).parents[1] / "docs" / "methods.md").read_text()
    assert doc_block(cls.name, cls.official_code, cls.deviations) in text


def test_the_schedule_is_the_official_draw():
    """Same generator, same rows, step by step: the draw that mtt and seqmatch share."""
    for n, batch in ((10, 10), (340, 170), (500, 160), (7, 3)):
        ours = draw_schedule(n, 9, batch, None, 8, torch.Generator().manual_seed(n), torch.device("cpu"))
        assert [s.index.tolist() for s in ours] == official_chunks(n, 9, batch, torch.Generator().manual_seed(n))


@pytest.mark.slow
def test_a_seqmatch_artifact_is_staged_and_its_second_experts_start_from_the_first_subset(manager, digits, tmp_path):
    _, view, _ = digits
    view = dataclasses.replace(view, train=view.train.subset(torch.arange(200)))
    learner = instantiate(manager.learners.get("convnet"), {"width": 8})
    method = instantiate(SeqMatch, {**TINY, "subsets": 2, "windows": "0-3,0-2"}, "quick")
    context = RunContext(torch.device("cpu"), 0, torch.Generator().manual_seed(0), cache_dir=tmp_path)
    art = method.distill(view, Budget.parse("ipc=3"), learner, context)
    assert art.tensors["stage.end"].tolist() == [20, 30] and art.tensors["stage.lr"].shape == (2,)
    assert sorted(art.tensors) == ["stage.end", "stage.lr", "x"] and art.recipe["labels"] == "class-balanced"
    first, second = art.meta["stages"]
    assert (first["ipc"], second["ipc"], first["window"], second["window"]) == (2, 1, "0-3", "0-2")
    assert (first["start_epochs"], second["start_epochs"]) == ([0, 1], [0])
    assert first["expert_expert_cache"] != second["expert_expert_cache"]  # keyed by the frozen subset


@pytest.mark.slow
def test_seqmatch_passes_the_conformance_kit(tmp_path):
    report = check_distiller(SeqMatch, {**TINY, "subsets": 2}, tasks=[tiny_classification(budgets=("ipc=1", "ipc=2"))],
                             cache_dir=tmp_path)
    assert report.passed
    assert [(c.budget, c.status) for c in report.cases][:2] == [("ipc=1", "skipped"), ("ipc=2", "ok")]
    assert "one stage, which is mtt's distillation" in report.cases[0].note
