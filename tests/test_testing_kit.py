"""The conformance kit (ddbench.testing): a well-behaved distiller passes; each broken rule fails
with a message that names the rule and the fix."""
from __future__ import annotations

import re
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path

import pytest
import torch

import ddbench.testing
from ddbench import Artifact, Budget, Distiller, hookimpl
from ddbench.budget.artifact import admission_problems, admit
from ddbench.errors import ArtifactError, BudgetError, NotApplicable
from ddbench.testing import (
    RULES,
    ConformanceError,
    TinyClassification,
    TinyRegression,
    check_distiller,
    check_registered,
    conformance,
    registered_task,
    task_view,
    tiny_classification,
    tiny_regression,
)
from ddbench_learners.convnet import ConvNetLearner

pytest_plugins = ["pytester"]

DOCS = Path(__file__).resolve().parents[1] / "docs"


class Reference(Distiller):
    """Seeded noisy copies of real examples; meets every rule. ``mode`` breaks one rule on purpose."""

    name = "reference"

    def __init__(self, mode: str = "ok"):
        self.mode = mode

    def distill(self, task, budget, learner, context):
        n = budget.examples(task)
        if n < (task.num_classes or 1):
            if self.mode == "crash-when-small":
                raise IndexError("index 0 is out of bounds for dimension 0 with size 0")
            if self.mode != "overspend-when-small":
                raise BudgetError(f"budget {budget} is below one example per class on {task.name!r}: raise it.")
            n = task.num_classes or 1
        if self.mode == "over":
            n += task.num_classes or 1
        index = torch.randperm(len(task.train), generator=context.generator, device=context.device)[:n]
        noise = torch.randn(n, *task.input_shape, generator=context.generator, device=context.device)
        if self.mode == "unseeded":
            noise = torch.randn(n, *task.input_shape, device=context.device)  # global RNG: ignores the seed
        x = task.train.x[index] + 0.01 * noise
        if self.mode == "nan":
            x[0] = float("nan")
        if self.mode == "in-place":
            task.train.x[index] += 1.0
        if self.mode != "silent":
            context.progress.update(1, 1, loss=0.0)
        y = task.train.y[index].clone()
        if self.mode == "float-labels" and task.num_classes is not None:
            y = y.float()
        if self.mode == "meta":
            x = torch.empty_like(x, device="meta")  # stands in, on a CPU machine, for a tensor left on the wrong device
        return Artifact({"x": x, "y": y})


class OverSeedNan(Reference):
    """The issue's deliberately broken distiller: over budget, ignores the seed, returns NaN."""

    name = "over-seed-nan"

    def distill(self, task, budget, learner, context):
        n = budget.examples(task) + 2
        x = torch.randn(n, *task.input_shape)  # global RNG, not context.generator
        x[0] = float("nan")
        context.progress.update(1, 1)
        return Artifact({"x": x, "y": torch.zeros(n, dtype=torch.long) if task.num_classes else torch.zeros(n)})


def test_a_conforming_distiller_passes_on_the_kit_device(ddbench_check):
    report = ddbench_check(Reference)
    assert report.passed and report.rules_broken == []
    assert [(c.task, c.budget, c.status) for c in report.cases] == [
        ("tiny-classification", "ipc=1", "ok"), ("tiny-classification", "params=400", "ok"),
        ("tiny-classification", "params=100 (unmeetable)", "ok"),
        ("tiny-regression", "params=90", "ok"), ("tiny-regression", "params=5 (unmeetable)", "ok"),
    ]
    assert [c.stored_scalars for c in report.cases if "unmeetable" not in c.budget] == [195, 390, 90]
    assert all(c.progress_updates == 1 for c in report.cases if "unmeetable" not in c.budget)
    assert "tiny-regression params=90: ok, 90/90 scalars" in report.summary()


def test_over_budget_ignores_seed_and_nan_each_named():
    with pytest.raises(ConformanceError) as caught:
        check_distiller(OverSeedNan, tasks=[tiny_classification()])
    message = str(caught.value)
    assert caught.value.report.rules_broken == ["budget-error", "finite", "seeded", "within-budget"]
    assert message.startswith("distiller 'over-seed-nan' broke 4 conformance rule(s) "
                              "(budget-error, finite, seeded, within-budget) on cpu:")
    assert ("[within-budget] tiny-classification ipc=1: artifact from 'over-seed-nan' stores 325 scalars, over the budget "
            "ipc=1 = 195 scalars (x=320, y=5): store less. Fix: size the artifact from the budget") in message
    assert ("[seeded] tiny-classification ipc=1: two runs with seed 0 gave different artifacts (tensor 'x' differs). "
            "Fix: draw all randomness from context.generator") in message
    assert ("[finite] tiny-classification ipc=1: artifact tensor 'x' from 'over-seed-nan' has NaN or infinite values: "
            "check the method's learning rate or loss. Fix: lower the learning rate") in message
    assert ("[budget-error] tiny-classification params=100 (unmeetable): distill() returned an artifact of 195 scalars, "
            "over params=100 = 100, instead of raising BudgetError. Fix: check the budget before any work") in message


@pytest.mark.parametrize("mode, rule, detail, fix", [
    ("over", "within-budget", "stores 390 scalars, over the budget ipc=1 = 195 scalars (x=384, y=6)", "size the artifact from the budget"),
    ("unseeded", "seeded", "two runs with seed 0 gave different artifacts (tensor 'x' differs).", "never from the global"),
    ("nan", "finite", "artifact tensor 'x' from 'reference' has NaN or infinite values", "never return a diverged artifact"),
    ("silent", "progress", "distill() never called context.progress.update().", "call context.progress.update(step, total"),
    ("in-place", "read-only-task", "changed the task's train or validation tensors in place.", "clone before modifying"),
    ("meta", "on-device", "tensors {'x': 'meta'} are not on the requested device cpu.", "create every tensor on context.device"),
    ("float-labels", "valid", "artifact 'y' from 'reference' is float of shape (3,): soft labels are (N, 3)", "one int64 label"),
    ("crash-when-small", "budget-error", "distill() crashed with IndexError: index 0 is out of bounds", "raise ddbench.errors.BudgetError"),
    ("overspend-when-small", "budget-error", "returned an artifact of 195 scalars, over params=100 = 100", "raise ddbench.errors.BudgetError"),
])
def test_each_broken_rule_is_named_with_its_fix(mode, rule, detail, fix):
    with pytest.raises(ConformanceError) as caught:
        check_distiller(Reference, {"mode": mode}, tasks=[tiny_classification()])
    assert caught.value.report.rules_broken == [rule]
    line = next(str(f) for f in caught.value.failures)
    assert line.startswith(f"[{rule}] tiny-classification ") and detail in line and "Fix: " in line and fix in line


class Crash(Reference):
    name = "crash"

    def distill(self, task, budget, learner, context):
        raise ZeroDivisionError("division by zero")


class BadSupports(Reference):
    name = "bad-supports"

    def supports(self, task, learner):
        return False


class ImagesOnly(Reference):
    name = "images-only"

    def supports(self, task, learner):
        return "needs images"


class Whole(Distiller):
    name = "whole"
    budget_exempt = True

    def distill(self, task, budget, learner, context):
        assert budget is None
        context.progress.update(1, 1)
        return Artifact({"x": task.train.x, "y": task.train.y})


def test_a_crash_on_a_meetable_budget_is_named():
    report = conformance(Crash, tasks=[tiny_regression(impossible=None)])
    assert len(report.failures) == 1
    assert re.match(r"\[runs\] tiny-regression params=90: distill\(\) raised ZeroDivisionError: division by zero "
                    r"\(at test_testing_kit\.py:\d+\)\. Fix: ", str(report.failures[0]))


class OneAndUp(Reference):
    """Applies from two examples per class on: below that, NotApplicable (a skip, not a failure)."""

    name = "one-and-up"

    def distill(self, task, budget, learner, context):
        classes = task.num_classes or 1
        if classes <= budget.examples(task) < 2 * classes:  # below one per class: Reference's BudgetError
            raise NotApplicable(f"{self.name} needs two examples per class: use ipc >= 2.")
        return super().distill(task, budget, learner, context)


def test_not_applicable_is_a_skip_unless_it_is_every_budget():
    report = conformance(OneAndUp, tasks=[tiny_classification(budgets=("ipc=1", "ipc=2"))])
    assert report.passed, report.failures
    assert [(c.budget, c.status, c.note) for c in report.cases[:2]] == [
        ("ipc=1", "skipped", "one-and-up needs two examples per class: use ipc >= 2."), ("ipc=2", "ok", "")]
    report = conformance(OneAndUp, tasks=[tiny_classification(budgets=("ipc=1",))])
    assert report.rules_broken == ["runs"] and "NotApplicable at every budget" in str(report.failures[0])


def test_interface_and_supports_rules():
    class NoDistill:
        name = "no-distill"

    assert conformance(NoDistill).rules_broken == ["interface"]
    assert "which is not a subclass of ddbench.contracts.interfaces.Distiller" in str(conformance(NoDistill).failures[0])
    assert conformance(BadSupports, tasks=[tiny_regression()]).failures[0].detail == "supports() returned False."
    report = conformance(ImagesOnly, tasks=[tiny_regression()])
    assert report.rules_broken == ["supports"] and "tiny-regression: needs images" in report.failures[0].detail


def test_budget_exempt_distillers_skip_the_budget_rules():
    report = check_distiller(Whole)
    assert [(c.budget, c.status) for c in report.cases] == [("full", "ok"), ("full", "ok")]


def test_a_class_a_worker_cannot_import_is_named():
    class Local(Reference):  # defined inside a function: pickled by reference, it cannot reach a worker
        name = "local"

    report = conformance(Local, tasks=[tiny_regression()])
    assert report.rules_broken == ["importable"]
    assert "Can't pickle local object" in report.failures[0].detail and "module level" in report.failures[0].fix


def test_registered_task_runs_an_installed_task():
    report = check_distiller(Reference, tasks=[registered_task("digits", ["ipc=1"], impossible="params=64", learner="mlp")])
    assert [(c.task, c.budget, c.status, c.stored_scalars) for c in report.cases] == [
        ("digits", "ipc=1", "ok", 650), ("digits", "params=64 (unmeetable)", "ok", None)]


def test_tiny_tasks_are_deterministic_and_shaped():
    a, b = TinyClassification().load(), TinyClassification().load()
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert a.train.x.shape == (60, 1, 8, 8) and torch.bincount(a.train.y).tolist() == [20, 20, 20]
    r = TinyRegression().load()
    assert r.train.x.shape == (160, 8) and r.train.y.dtype == torch.float32 and len(r.val) == 40
    with pytest.raises(BudgetError):  # the kit's unmeetable budgets are below one example per class
        tiny_classification().impossible.ipc(task_view(TinyClassification()))
    assert tiny_regression().impossible.examples(task_view(TinyRegression())) == 0


class FakeEntryPoint:
    def __init__(self, name, target):
        self.name, self.value, self.dist, self._target = name, target.__name__, None, target

    def load(self):
        return self._target


def test_check_registered(monkeypatch):
    module = types.ModuleType("fake_plugin")
    module.ddbench_register_distillers = hookimpl(lambda register: register(Reference))
    monkeypatch.setattr(metadata, "entry_points", lambda group: [FakeEntryPoint("fake", module)])
    assert check_registered(Reference) == "fake"
    with pytest.raises(ConformanceError, match=r"\[entry-point\] distiller 'over-seed-nan': no installed plugin registers it\. "
                                               r"Fix: install the package \(pip install -e \.\)"):
        check_registered(OverSeedNan)


def test_fixtures_and_option_work_for_a_plugin_author(pytester):
    """What a plugin author writes: a few lines, fixtures from the pytest11 entry point."""
    pytester.makepyfile(test_author="""
        import torch
        from ddbench import Artifact, Budget, Distiller

        class Means(Distiller):
            name = "means"

            def distill(self, task, budget, learner, context):
                ipc = budget.ipc(task)
                context.progress.update(1, 1)
                x = torch.stack([task.train.x[task.class_index(c)].mean(0) for c in range(task.num_classes)])
                return Artifact({"x": x.repeat_interleave(ipc, 0), "y": torch.arange(task.num_classes, device=context.device).repeat_interleave(ipc)})

            def supports(self, task, learner):
                return None if task.num_classes else "classification only"

        def test_means(ddbench_check, ddbench_device, ddbench_tiny_classification, ddbench_context):
            assert ddbench_device == torch.device("cpu") == ddbench_context.device
            assert ddbench_tiny_classification.train.x.device == ddbench_device
            ddbench_check(Means)
    """)
    result = pytester.runpytest_inprocess("--ddbench-device", "cpu", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_every_rule_is_documented():
    text = (DOCS / "write-a-distiller.md").read_text()
    missing = [rule for rule in [*RULES, "entry-point"] if f"`{rule}`" not in text]
    assert not missing, f"rules {missing} are not described in docs/write-a-distiller.md: add a row for each."


def test_the_kit_reports_every_problem_admit_refuses_under_its_rule():
    """One home for the artifact checks: ddbench.budget.artifact finds the problems, the harness raises
    the first (one line), the kit reports each under its rule with the same message."""
    view, budget = task_view(TinyClassification()), Budget.parse("ipc=1")
    x = torch.zeros(5, 1, 8, 8)  # what OverSeedNan returns: 5 rows, one NaN, over the 195 scalars of ipc=1
    x[0] = float("nan")
    artifact = Artifact({"x": x, "y": torch.zeros(5, dtype=torch.long)})
    problems = admission_problems(artifact, view, budget, "over-seed-nan", ConvNetLearner)
    assert [p.rule for p in problems] == ["finite", "within-budget"] and {p.rule for p in problems} <= set(RULES)
    with pytest.raises(ArtifactError) as refused:
        admit(artifact, view, budget, "over-seed-nan", ConvNetLearner)
    assert str(refused.value) == problems[0].message and "\n" not in problems[0].message
    with pytest.raises(BudgetError) as over:
        admit(Artifact({"x": x.nan_to_num(), "y": artifact.tensors["y"]}), view, budget, "over-seed-nan", ConvNetLearner)
    assert str(over.value) == problems[1].message
    kit = conformance(OverSeedNan, tasks=[tiny_classification(impossible=None)])
    assert {(p.rule, p.message) for p in problems} <= {(f.rule, f.detail) for f in kit.failures}


def test_the_pytest_plugin_imports_nothing_heavy():
    """pytest loads the kit's plugin in every run where ddbench is installed: no torch until a fixture is used."""
    code = "import ddbench.testing.pytest_plugin, sys; print('torch' in sys.modules, 'numpy' in sys.modules, 'ddbench.contracts.interfaces' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]
    (entry,) = [e for e in metadata.entry_points(group="pytest11") if e.name == "ddbench"]
    assert entry.value == "ddbench.testing.pytest_plugin"


def test_the_package_exports_what_the_kit_module_did():
    names = {"RULES", "Failure", "Case", "ConformanceReport", "ConformanceError", "TinyClassification", "TinyRegression", "KitTask",
             "tiny_classification", "tiny_regression", "registered_task", "task_view", "check_distiller", "conformance",
             "check_registered", "TRAIN_EPOCHS", "SEEDED_RTOL"}
    assert set(ddbench.testing.__all__) == names and names <= set(dir(ddbench.testing))
    assert all(getattr(ddbench.testing, name) is not None for name in names)
    with pytest.raises(AttributeError, match="has no attribute 'missing'"):
        ddbench.testing.missing  # noqa: B018 - the attribute access is what raises
