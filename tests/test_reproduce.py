"""``ddbench reproduce``: a method's published rows, the task that compares with them, the page."""
from __future__ import annotations

import argparse
import types

import pytest
import torch

from ddbench import Artifact, Distiller, Published, hookimpl
from ddbench.cli import main
from ddbench.errors import SuiteError
from ddbench.plugins import PluginManager, get_plugin_manager
from ddbench.results.store import ResultStore
from ddbench.run import reproduce
from ddbench.run.harness import Harness
from ddbench.testing.tasks import TinyClassification


class TinyPart(TinyClassification):
    name = "tiny-part"
    description = "part of the tiny dataset"
    reference_dataset = "tiny"


class Means(Distiller):
    """One class mean per class; ``iterations`` only says how long it 'ran'."""

    name = "means"
    published = (Published("tiny", 1, 90.0, 5.0, 50.0, 5.0, "a test table"),)

    def __init__(self, iterations: int = 100):
        self.iterations = iterations

    def distill(self, task, budget, learner, context):
        x = torch.stack([task.train.x[task.class_index(c)].mean(0) for c in range(task.num_classes)])
        return Artifact({"x": x, "y": torch.arange(task.num_classes)}, meta={"iterations": self.iterations})


@pytest.fixture
def manager():
    pm = PluginManager()
    convnet = get_plugin_manager().learners.get("convnet")
    pm.add(types.SimpleNamespace(ddbench_register_tasks=hookimpl(lambda register: register(TinyPart)),
                                 ddbench_register_learners=hookimpl(lambda register: register(convnet)),
                                 ddbench_register_distillers=hookimpl(lambda register: register(Means))), "tiny")
    return pm


def args(tmp_path, **over) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    reproduce.add_arguments(parser)
    ns = parser.parse_args(["means", "--ipc", "1", "--iterations", "3", "--eval-seeds", "2", "--device", "cpu",
                            "--out", str(tmp_path / "out"), "--store", str(tmp_path / "r.sqlite")])
    for k, v in over.items():
        setattr(ns, k, v)
    return ns


def executor(manager, seen=None):
    """An ``execute`` for :func:`reproduce.run` that runs the suite here (with its threads) into the
    store, noting each suite in ``seen``."""
    def execute(suite, store, device):
        if seen is not None:
            seen.append(suite)
        with ResultStore(store, manager) as results:
            for result in Harness(manager, device, threads=suite.threads or 1).run(suite):
                results.put(result, suite.name)
            return results.records()

    return execute


def test_a_reproduction_page_puts_published_and_measured_side_by_side(manager, tmp_path):
    assert reproduce.run(args(tmp_path), manager, executor(manager)) == 0
    page = (tmp_path / "out" / "means-tiny-part.md").read_text()
    assert "# Reproduction: means on tiny-part" in page and "a test table" in page
    assert "holds only part of tiny" in page  # the task is a part of the published dataset
    assert "**Reduced length**: 3 of the published 100 iterations" in page
    (line,) = [l for l in page.splitlines() if l.startswith("| 1 |")]
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[1:4] == ["90.0 ± 5.0", "50.0 ± 5.0", "+40.0"] and cells[7] == "2" and cells[8] == "3"
    assert cells[-1] == "within the published std" or cells[-1].startswith("outside: ")
    assert (tmp_path / "out" / "means-tiny-part.json").exists()


def test_a_reproduction_takes_method_and_task_options_and_the_quick_profile_as_a_smoke_test(manager, tmp_path):
    seen: list = []
    assert reproduce.run(args(tmp_path, method="means:iterations=7", iterations=None, profile="quick", task="tiny-part:seed=3"),
                         manager, executor(manager, seen)) == 0
    assert seen[0].profile == "quick" and seen[0].distillers[0].options == {"iterations": 7}
    assert seen[0].tasks[0].options == {"seed": 3}
    page = (tmp_path / "out" / "means-tiny-part.md").read_text()
    assert "**Quick profile** (`--profile quick`): CPU sizes and recipe, not the published configuration" in page
    assert "**Reduced length**: 7 of the published 100 iterations" in page
    assert "**Task options** seed=3 (`--task`): not the published configuration" in page
    assert "`ddbench reproduce means:iterations=7 --task tiny-part:seed=3 --ipc 1 --eval-seeds 2 --profile quick --device cpu`" in page


def test_a_reproduction_runs_with_the_threads_asked_for_and_says_so(manager, tmp_path):
    seen: list = []
    assert reproduce.run(args(tmp_path, threads=2), manager, executor(manager, seen)) == 0
    assert seen[0].threads == 2
    page = (tmp_path / "out" / "means-tiny-part.md").read_text()
    assert "device: cpu, 2 torch thread(s) per cell." in page
    assert "--eval-seeds 2 --device cpu --threads 2`" in page


def test_a_resumed_distillation_is_named_on_the_page(manager):
    record = {"status": "ok", "config": {"budget": "ipc=1", "distiller_options": {"iterations": 100}, "task_options": {},
                                         "profile": "full"},
              "values": [91.0, 92.0], "random_ref": 60.0, "extra": {"iterations": 100}, "distill_s": 5.0, "eval_s": 1.0,
              "device": "cpu", "threads": 2, "resumed_from": 42}
    found = reproduce.lines(Means.published, "tiny", [1], [record])
    assert found[0].resumed_from == 42 and found[0].verdict == "within the published std"
    page = reproduce.page("means", "tiny-part", "tiny", found, [record], 100, "ddbench reproduce means", manager)
    assert "- **Resumed**: the ipc 1 distillation was stopped and resumed from its checkpoint at iteration 42" in page
    assert "- Length: the method's published number of iterations." in page
    whole = {**record, "resumed_from": 0}
    page = reproduce.page("means", "tiny-part", "tiny", reproduce.lines(Means.published, "tiny", [1], [whole]), [whole], 100,
                          "ddbench reproduce means", manager)
    assert "Resumed" not in page


def test_bad_requests_are_one_line_errors(manager, tmp_path):
    with pytest.raises(SuiteError, match="'means' published no result at ipc 10 on tiny: use --ipc 1"):
        reproduce.run(args(tmp_path, ipc=[10]), manager, None)
    with pytest.raises(SuiteError, match="--threads must be a number of threads from 1 to"):
        reproduce.run(args(tmp_path, threads=0), manager, None)
    real = get_plugin_manager()
    with pytest.raises(SuiteError, match="declares no published results"):
        reproduce.pick_task(real, "random", None)
    with pytest.raises(SuiteError, match="task 'digits' compares with no dataset 'dc' published.*mnist5k"):
        reproduce.pick_task(real, "dc", "digits")
    assert reproduce.pick_task(real, "dc", "mnist5k") == ("mnist5k", "mnist")


def test_the_command_line_names_a_bad_method(capsys):
    assert main(["reproduce", "herding"]) == 2
    assert "declares no published results" in capsys.readouterr().err


@pytest.mark.slow
def test_reproduce_dc_runs_end_to_end_on_cpu(tmp_path, capsys):
    code = main(["reproduce", "dc", "--ipc", "1", "--iterations", "1", "--eval-seeds", "1", "--profile", "quick", "--device", "cpu",
                 "--store", str(tmp_path / "r.sqlite"), "--out", str(tmp_path)])  # quick: CPU minutes, the same path
    assert code == 0
    page = (tmp_path / "dc-mnist5k.md").read_text()
    assert "91.7 ± 0.5" in page and "64.9 ± 3.5" in page and "1 of the published 1000 iterations" in page
    assert "**Quick profile** (`--profile quick`)" in page


def test_rows_published_on_zca_inputs_run_on_the_whitened_task(manager):
    real = get_plugin_manager()
    suite = reproduce.suite_for(real, "mtt", "cifar10", "cifar10", [1, 10, 50], 5, 2, 0)
    assert [(t.options, [b.value for b in t.budgets]) for t in suite.tasks] == [({"zca": True}, [1, 10]), ({}, [50])]
    found = reproduce.lines(real.distillers.get("mtt").published, "cifar10", [1, 50], [])
    note = reproduce.zca_note(real, "cifar10", found)
    assert note and "ipc 1 were made on ZCA-whitened inputs; so are these runs" in note and "Ipc 50: the task's normalisation" in note
    assert reproduce.zca_note(real, "mnist5k", reproduce.lines(real.distillers.get("mtt").published, "mnist", [1], [])) is None
    whitened = Published("tiny", 1, 90.0, 5.0, 50.0, 5.0, "a test table", zca=True)
    assert reproduce.task_options(manager, "tiny-part", whitened) == {}  # no zca option: the page says so
    assert "has no `zca` option" in (reproduce.zca_note(manager, "tiny-part", [reproduce.Line(whitened)]) or "")


@pytest.mark.parametrize("mean, verdict", [
    (93.0, "within the published std"), (85.0, "within the published std"),
    (84.25, "outside: -5.75 points from the published mean, 0.75 past its std"),
    (96.0, "outside: +6.00 points from the published mean, 1.00 past its std"),
])
def test_a_verdict_outside_says_by_how_much(mean, verdict):
    published = Published("tiny", 1, 90.0, 5.0, 50.0, 5.0, "a test table")
    assert reproduce.Line(published, mean=mean, status="ok").verdict == verdict


def test_the_page_names_the_commit_its_cells_ran_at(manager, monkeypatch):
    """A reused cell ran at an earlier commit: the page gives that one, and the one it was written at."""
    ran = {"ddbench": "0.1.0", "commit": "aaaaaaaaaaaa", "torch": "2.13.0", "python": "3.11.7"}
    record = {"status": "ok", "device": "cpu", "threads": 2, "config": {"distiller_options": {}, "task_options": {}, "profile": "full"},
              "provenance": ran}
    found = [reproduce.Line(Published("tiny", 1, 90.0, 5.0, 50.0, 5.0, "a test table"), mean=91.0, status="ok")]

    def page():
        return reproduce.page("means", "tiny", "tiny", found, [record], 100, "ddbench reproduce means", manager)

    monkeypatch.setattr(reproduce, "provenance", lambda manager: {**ran, "commit": "bbbbbbbbbbbb"})
    assert "the cells ran on ddbench 0.1.0 (commit aaaaaaaaaaaa)" in page()
    assert "This page was written at commit bbbbbbbbbbbb." in page()
    monkeypatch.setattr(reproduce, "provenance", lambda manager: ran)
    assert "(commit aaaaaaaaaaaa)" in page() and "This page was written" not in page()
