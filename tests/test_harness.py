"""The harness loop: validation of artifacts, failing cells, seeds and budgets."""
from __future__ import annotations

import types

import pytest
import torch

from ddbench import Artifact, Budget, Distiller, hookimpl
from ddbench.budget.artifact import count_storage
from ddbench.errors import BudgetError, NotApplicable, SuiteError
from ddbench.plugins import PluginManager
from ddbench.run.harness import Harness
from ddbench.run.suite import DistillerEntry, Suite, TaskEntry
from ddbench.testing import TinyRegression

FAST = {"epochs": 3}  # evaluation recipe override that keeps these tests fast


class Fixed(Distiller):
    """ipc real examples per class, as given by ``mode``: ok, over budget, NaN, raise, hidden."""

    name = "fixed"

    def __init__(self, mode: str = "ok"):
        self.mode = mode

    def distill(self, task, budget, learner, context):
        if self.mode == "raise":
            raise RuntimeError("plugin bug")
        if self.mode == "not-here":
            raise NotApplicable(f"fixed does not apply at {budget}: use another budget.")
        ipc = budget.ipc(task) + (1 if self.mode == "over" else 0)
        idx = torch.cat([task.class_index(c)[:ipc] for c in range(task.num_classes)])
        x = task.train.x[idx].clone()
        if self.mode == "nan":
            x[0, 0, 0, 0] = float("nan")
        tensors = {"x": x, "y": task.train.y[idx].clone()}
        if self.mode == "hidden":
            tensors["decoder"] = torch.zeros(100)
        return Artifact(tensors, recipe=FAST)


class Noisy(Distiller):
    """Random noise inputs drawn from the context's generator (tests seeding)."""

    name = "noisy"

    def distill(self, task, budget, learner, context):
        ipc = budget.ipc(task)
        x = torch.randn(ipc * task.num_classes, *task.input_shape, generator=context.generator)
        y = torch.arange(task.num_classes).repeat_interleave(ipc)
        return Artifact({"x": x, "y": y}, recipe=FAST)


class Images(Distiller):
    name = "images-only"

    def supports(self, task, learner):
        return None if len(task.input_shape) == 3 else "needs images"

    def distill(self, task, budget, learner, context):
        raise AssertionError("never called on an unsupported task")


@pytest.fixture(scope="module")
def kit_harness(tmp_path_factory):
    pm = PluginManager()
    pm.load_entrypoints()
    plugin = types.SimpleNamespace(ddbench_register_distillers=hookimpl(lambda register: [register(c) for c in (Fixed, Noisy, Images)]),
                                   ddbench_register_tasks=hookimpl(lambda register: register(TinyRegression)))
    pm.add(plugin, "test-plugin")
    return Harness(pm, "cpu", cache_dir=tmp_path_factory.mktemp("cache"))


def suite(*distillers, budgets=("ipc=1",), eval_seeds=1, task="digits", options=None) -> Suite:
    return Suite("t", [TaskEntry(task, [Budget.parse(b) for b in budgets], options or {})],
                 [DistillerEntry(n, o) for n, o in distillers], "quick", eval_seeds, [0])


def test_failing_cells_do_not_stop_the_run(kit_harness):
    results = kit_harness.run(suite(("fixed", {"mode": "raise"}), ("fixed", {"mode": "over"}),
                                    ("fixed", {"mode": "nan"}), ("fixed", {"mode": "ok"})))
    status = [(r.status, r.error) for r in results]
    assert status[0] == ("failed", "RuntimeError: plugin bug")
    assert "RuntimeError: plugin bug" in results[0].traceback
    assert status[1][0] == "failed" and "over the budget ipc=1 = 650 scalars" in status[1][1]
    assert status[2][0] == "failed" and "NaN" in status[2][1]
    assert status[3][0] == "ok" and 0.0 <= results[3].mean <= 100.0
    assert all("\n" not in r.error for r in results)


def test_storage_counts_every_tensor(kit_harness):
    ok, hidden = kit_harness.run(suite(("fixed", {"mode": "ok"}), ("fixed", {"mode": "hidden"}), budgets=("ipc=2",)))
    assert ok.stored_params == 20 * 64 + 20
    assert hidden.status == "failed" and "decoder=100" in hidden.error  # the hidden tensor is charged
    storage = count_storage(Artifact({"x": torch.zeros(3, 4), "y": torch.zeros(3, dtype=torch.long), "lr": torch.zeros((), dtype=torch.float64)}))
    assert (storage.scalars, storage.bytes) == (16, 12 * 4 + 3 * 8 + 8)
    assert storage.by_dtype == {"float32": 48, "int64": 24, "float64": 8}


def test_seeds_give_identical_results_on_cpu(kit_harness):
    first = kit_harness.run(suite(("noisy", {}), eval_seeds=2))[0]
    again = kit_harness.run(suite(("noisy", {}), eval_seeds=2))[0]
    assert first.status == "ok" and first.values == again.values
    assert first.values[0] != first.values[1]  # different eval seeds, different models


def test_unsupported_task_is_skipped(kit_harness):
    (result,) = kit_harness.run(suite(("images-only", {}), budgets=("params=90",), task="tiny-regression"))
    assert (result.status, result.error) == ("skipped", "needs images")


def test_a_distiller_that_does_not_apply_at_a_budget_is_skipped(kit_harness):
    (result,) = kit_harness.run(suite(("fixed", {"mode": "not-here"})))
    assert (result.status, result.error) == ("skipped", "fixed does not apply at ipc=1: use another budget.")


def test_ipc_budget_on_regression_is_rejected_up_front(kit_harness):
    with pytest.raises(SuiteError, match="regression: ipc budgets do not apply; use params=N"):
        list(kit_harness.cells(suite(("random", {}), task="multi-index")))


def test_budget_conversion(digits):
    _, view, _ = digits
    assert Budget.parse("ipc=10").scalars(view) == 10 * 10 * 65
    assert Budget.parse("params=1300").ipc(view) == 2
    with pytest.raises(BudgetError, match="below one example per class"):
        Budget.parse("params=100").ipc(view)
    for bad in ("ipc=0", "ipc=x", "imgs=3", "10"):
        with pytest.raises(BudgetError, match="malformed budget"):
            Budget.parse(bad)


def test_saved_artifact_sidecar_records_the_cell(kit_harness, tmp_path):
    import json

    from ddbench.budget.artifact import load

    saving = Harness(kit_harness.manager, "cpu", cache_dir=kit_harness.cache_dir, artifact_dir=tmp_path)
    (result,) = saving.run(suite(("fixed", {"mode": "ok"})))
    (path,) = tmp_path.glob("digits-fixed-*.safetensors")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["info"]["cell"]["distiller"] == "fixed" and sidecar["info"]["cell"]["budget"] == "ipc=1"
    assert sidecar["info"]["recipe"]["epochs"] == FAST["epochs"] and sidecar["info"]["provenance"]["torch"]
    assert sidecar["info"]["storage"]["scalars"] == result.stored_params
    assert torch.equal(load(path).tensors["y"], torch.arange(10))


class Stopped(Fixed):
    """Records a run length in its meta (a worker loads the class by reference: module level)."""

    name = "stopped"

    def distill(self, task, budget, learner, context):
        artifact = super().distill(task, budget, learner, context)
        artifact.meta.update(iterations=7, stopped_early=True, loss=[1.0, 0.5])
        return artifact


def test_run_length_from_artifact_meta_is_recorded(kit_harness):
    pm = PluginManager()  # its own manager: the module's harness stays as every other test finds it
    pm.load_entrypoints()
    pm.add(types.SimpleNamespace(ddbench_register_distillers=hookimpl(lambda register: register(Stopped))), "stopped-plugin")
    (result,) = Harness(pm, "cpu", cache_dir=kit_harness.cache_dir).run(suite(("stopped", {})))
    assert result.extra["iterations"] == 7.0 and result.extra["stopped_early"] == 1.0 and "loss" not in result.extra
