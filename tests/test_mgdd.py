"""The mgdd plugin: the least-squares label solve, the regeneration form's accounting, Reptile's
inner loop and outer step, the source rule and its test-free view, the documented deviations, the kit."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ddbench import Budget
from ddbench.contracts.deviations import doc_block
from ddbench.contracts.interfaces import RunContext, Split, TaskData, TaskView
from ddbench.errors import BudgetError, DDBenchError, TaskDataError
from ddbench.plugins import instantiate
from ddbench.run.suite import view_opener
from ddbench.testing import check_distiller
from ddbench.testing.tasks import registered_task
from ddbench_mgdd.distiller import META_IPC, MGDD
from ddbench_mgdd.objective import as_distribution, solve
from ddbench_tasks.images import Digits

TINY = {"width": 4, "batch_real": 16}


def test_the_label_solve_recovers_the_targets_when_the_synthetic_set_is_the_real_one():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(12, 40, generator=g)
    targets = F.one_hot(torch.arange(12) % 3, 3).float()
    loss, labels = solve(features, features, targets, torch.zeros(12, 3), lam=1e-6, mu=1e-6)
    assert float(loss) < 1e-3 and torch.allclose(labels, targets, atol=0.05)


def test_the_label_solve_is_differentiable_and_gives_bounded_distributions():
    g = torch.Generator().manual_seed(1)
    syn = torch.randn(6, 20, generator=g, requires_grad=True)
    loss, _ = solve(syn, torch.randn(30, 20, generator=g), F.one_hot(torch.arange(30) % 3, 3).float(),
                         F.one_hot(torch.arange(6) % 3, 3).float(), lam=1e-3, mu=1e-2)
    loss.backward()
    assert syn.grad is not None and torch.isfinite(syn.grad).all()
    dist = as_distribution(torch.tensor([[0.7, -0.2, 0.5], [-1.0, -2.0, -0.1]]))
    assert torch.allclose(dist.sum(1), torch.ones(2)) and (dist >= 0).all()
    assert torch.allclose(dist[1], torch.full((3,), 1 / 3))


def test_the_regeneration_form_pays_for_its_weights_in_images(digits):
    _, view, _ = digits  # 10 classes of 1x8x8: ipc=10 is 6,500 scalars
    mgdd = MGDD(form="regenerate", width=16, depth=2)  # 2,785 weights
    assert mgdd.rows_per_class(view, Budget.parse("ipc=10")) == (6500 - 2785) // 650
    assert MGDD(form="outputs").rows_per_class(view, Budget.parse("ipc=10")) == 10
    with pytest.raises(BudgetError, match="cannot hold mgdd's generator"):
        mgdd.rows_per_class(view, Budget.parse("ipc=2"))


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="unknown form"):
        MGDD(form="images")
    with pytest.raises(ValueError, match="augment must be true or false"):
        MGDD(augment="maybe")
    with pytest.raises(ValueError, match="unknown meta"):
        MGDD(meta="maml")
    with pytest.raises(ValueError, match="meta_lr must lie in"):
        MGDD(meta_lr=0)


def context(cache: Path, manager=None) -> RunContext:
    """A quick-profile context; with ``manager``, its source_view reads that manager's tasks."""
    return RunContext(torch.device("cpu"), 0, torch.Generator().manual_seed(0), profile="quick", cache_dir=cache,
                      open_view=None if manager is None else view_opener(manager, "quick", "cpu"))


def convnet(manager):
    return instantiate(manager.learners.get("convnet"), {"width": 8}, "quick")


def test_the_default_source_is_a_larger_bundled_task_or_the_target_itself(digits):
    _, view, _ = digits
    assert MGDD().source_name(view) == "mnist5k"
    for name in ("mnist5k", "mnist", "cifar10"):
        assert MGDD().source_name(dataclasses.replace(view, name=name)) == "self"
    assert MGDD(source="digits").source_name(view) == "digits"
    assert MGDD(source="self").source_view(view, context(Path("unused"))) is view


def test_reptile_runs_the_targets_adaptation_as_its_inner_loop_and_steps_part_way(digits, manager, tmp_path, monkeypatch):
    _, view, _ = digits
    calls = []
    adapt = MGDD.adapt

    def spy(self, generator, task, learner, steps, inputs, c, seeds, progress=None):
        calls.append((steps, torch.bincount(c, minlength=10).tolist(), task is view))
        return adapt(self, generator, task, learner, steps, inputs, c, seeds, progress)

    monkeypatch.setattr(MGDD, "adapt", spy)
    options = {"source": "self", "meta_steps": 3, "inner_steps": 3, **TINY}  # one episode
    start = [p.clone() for p in MGDD(source="self", meta_steps=0, **TINY).meta_trained(view, convnet(manager), context(tmp_path / "0"))[0].parameters()]
    full = MGDD(meta_lr=1.0, **options).meta_trained(view, convnet(manager), context(tmp_path / "1"))[0]
    half = MGDD(meta_lr=0.5, **options).meta_trained(view, convnet(manager), context(tmp_path / "2"))[0]
    assert calls == [(3, [META_IPC] * 10, True)] * 2  # one inner loop each: 3 adaptation steps on a 10-per-class episode
    for p0, p1, p2 in zip(start, full.parameters(), half.parameters()):
        assert torch.allclose(p2, (p0 + p1) / 2, atol=1e-6)  # Reptile: half way from the start to the adapted weights
    assert any(not torch.equal(p0, p1) for p0, p1 in zip(start, full.parameters()))
    calls.clear()
    MGDD(meta="pretrain", source="self", meta_steps=2, **TINY).meta_trained(view, convnet(manager), context(tmp_path / "3"))
    assert calls == []  # multi-task pretraining has no inner loop


def test_the_source_is_read_through_the_run_context_without_its_test_split(digits, manager, tmp_path, monkeypatch):
    """mgdd reads its source only through RunContext.source_view, which gives a TaskView (no test
    split); the source task's test split is never moved, let alone handed over."""
    _, view, _ = digits

    class Untouchable(Split):
        def to(self, device):
            raise AssertionError("the source's test split was moved")

    loaded = Digits.load

    def load(self):
        data = loaded(self)
        return TaskData(data.train, data.val, Untouchable(data.test.x, data.test.y))

    monkeypatch.setattr(Digits, "load", load)
    ctx = context(tmp_path, manager)
    views, opener = [], ctx.open_view
    ctx.open_view = lambda spec: views.append(opener(spec)) or views[-1]
    MGDD(source="digits", meta_steps=1, inner_steps=1, **TINY).meta_trained(view, convnet(manager), ctx)
    assert [type(v) for v in views] == [TaskView] and not hasattr(views[0], "test")
    with pytest.raises(DDBenchError, match="reads no other task \\(asked for 'digits'\\).*view_opener"):
        MGDD(source="digits", **TINY).meta_trained(view, convnet(manager), context(tmp_path))


def test_a_source_whose_files_are_absent_is_a_one_line_error(digits, manager, tmp_path, monkeypatch):
    _, view, _ = digits
    monkeypatch.setenv("DDBENCH_DATA_ROOT", str(tmp_path))
    monkeypatch.delenv("DDBENCH_DOWNLOAD", raising=False)
    with pytest.raises(TaskDataError, match="mgdd's source task 'mnist'.*source=self") as error:
        MGDD(source="mnist", **TINY).meta_trained(view, convnet(manager), context(tmp_path, manager))
    assert "\n" not in str(error.value)


def test_the_documented_deviations_are_the_declared_ones():
    methods = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    assert doc_block("mgdd", MGDD.official_code, MGDD.deviations) in methods


@pytest.mark.slow
@pytest.mark.parametrize("form", ["outputs", "regenerate"])
def test_mgdd_passes_the_conformance_kit(form, tmp_path):
    options = {"form": form, "source": "digits", "meta_steps": 2, "inner_steps": 2, "adapt_steps": 2, "width": 4, "batch_real": 32}
    report = check_distiller(MGDD, options, tasks=[registered_task("digits", ["ipc=2"], impossible="params=100")],
                             cache_dir=tmp_path)
    assert report.passed
