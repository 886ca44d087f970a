"""The artifact is the only channel from a distiller to the evaluation, and cells cannot affect
each other: the adversarial plugin of ``tests/adversarial.py`` run through the harness.

Each attack returns the same counted tensors as the honest ``first`` distiller (the first example
of every class), so where the attack is stopped its cell scores exactly what ``first`` scores.
"""
from __future__ import annotations

import pytest

import adversarial
from ddbench import Budget
from ddbench.plugins import PluginManager, parse_named
from ddbench.results.records import Cell
from ddbench.run import worker
from ddbench.run.harness import Harness
from ddbench.run.suite import DistillerEntry, Suite, TaskEntry


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    manager = PluginManager()
    manager.load_entrypoints()
    manager.add(adversarial, "adversarial")
    return Harness(manager, "cpu", cache_dir=tmp_path_factory.mktemp("cache"))


def run(harness, *distillers, learner=None, time_limit=None, budget="ipc=1"):
    suite = Suite("adversarial", [TaskEntry("digits", [Budget.parse(budget)], {}, learner)],
                  [DistillerEntry(*parse_named(d)) for d in distillers], "quick", 1, [0], time_limit)
    return harness.run(suite)


@pytest.fixture(scope="module")
def honest(harness):
    (result,) = run(harness, "first")
    assert result.status == "ok" and result.stored_params == 650
    return result


def failed_with(result, message):
    assert result.status == "failed", result.error
    assert message in result.error and "\n" not in result.error
    return result


# -- what crosses is counted ----------------------------------------------------------------------
def test_a_tensor_subclass_that_lies_about_its_size_is_refused(harness):
    (result,) = run(harness, "lying-tensor")
    failed_with(result, "artifact tensor 'x' from 'lying-tensor' is a Liar (a torch.Tensor subclass): return a plain tensor.")


@pytest.mark.parametrize("mode, message", [
    ("sparse", "artifact tensor 'x' from 'packed' is a torch.sparse_coo tensor: store it dense"),
    ("complex", "artifact tensor 'x' from 'packed' has dtype torch.complex128: store a real dtype"),
    ("huge", "the artifact of 'packed' is larger than its budget ipc=1 can hold"),
])
def test_packed_values_are_refused(harness, mode, message):
    (result,) = run(harness, f"packed:mode={mode}")
    failed_with(result, message)


def test_a_small_view_carries_only_its_own_elements(harness, honest):
    adversarial.Spy.seen.clear()
    (result,) = run(harness, "packed:mode=view", learner="spy")
    assert result.status == "ok" and result.stored_params == honest.stored_params
    assert result.values == honest.values  # the whole-train storage behind the view did not cross
    seen = adversarial.Spy.seen[0]  # the cell's own evaluation (then its random reference)
    assert all(nbytes == counted for nbytes, counted in seen["storage"].values()), seen["storage"]
    assert seen["types"] == {"x": "Tensor", "y": "Tensor"}


# -- no other channel reaches the learner ---------------------------------------------------------
@pytest.mark.parametrize("mode", ["learner", "meta", "attribute", "global"])
def test_nothing_but_the_counted_tensors_reaches_the_learner(harness, honest, mode):
    adversarial.Spy.seen.clear()
    (result,) = run(harness, f"tamper:mode={mode}", learner="spy")
    assert result.status == "ok" and result.values == honest.values and result.stored_params == 650
    seen = adversarial.Spy.seen[0]  # the cell's own evaluation (then its random reference)
    assert not seen["tampered"] and seen["width"] == 32  # a learner instance the distiller never saw
    assert seen["meta"] == {} and not seen["attribute"] and not seen["global"]


@pytest.mark.parametrize("mode, message", [
    ("lr=0.05", "declares recipe lr=0.05: real-valued fields, the optimizer and its schedule belong to the task's protocol"),
    ("lr=nan", "declares recipe lr=nan: real-valued fields, the optimizer and its schedule belong to the task's protocol"),
    ("augment=bogus", "declares recipe augment='bogus': use one of none, dsa, dc, crop, crop_flip."),
    ("augmnt=dsa", "declares unknown recipe field 'augmnt'. Did you mean: augment?"),
    ("labels=soft", "declares recipe labels='soft': use one of stored, class-balanced."),
])
def test_a_recipe_carries_choices_not_numbers(harness, mode, message):
    (result,) = run(harness, f"tamper:mode={mode}")
    failed_with(result, message)


def test_the_test_split_is_not_in_the_distillers_process(harness, honest):
    (result,) = run(harness, "test-hunter")
    assert result.status == "ok", result.error
    assert adversarial.reachable_test_split() == "gc.get_objects()"  # it is in the harness's process


def test_another_tasks_view_comes_from_the_harness_without_its_test_split(harness, honest):
    (result,) = run(harness, "test-hunter:source=digits")  # the cell's own task: its test split is the one hunted
    assert result.status == "ok", result.error
    assert result.sources == ["digits"] and honest.sources == []


def test_an_unknown_source_task_is_named_in_one_line(harness, honest, monkeypatch):
    (result,) = run(harness, "test-hunter:source=mnst")
    failed_with(result, "unknown task 'mnst'. Did you mean: mnist")
    assert "ddbench ls tasks" in result.error and result.sources == []
    monkeypatch.delitem(harness.manager.tasks.items, "mnist5k")  # the run's plugins decide, not the installed ones
    (result,) = run(harness, "test-hunter:source=mnist5k")
    failed_with(result, "unknown task 'mnist5k'")


# -- cells cannot affect each other -------------------------------------------------------------
@pytest.mark.parametrize("mode", ["inplace", "dtype", "nograd"])
def test_a_vandal_cannot_damage_the_next_cell(harness, honest, mode):
    vandal, after = run(harness, f"vandal:mode={mode}", "first")
    assert vandal.status == "ok" and vandal.values == honest.values
    assert after.status == "ok" and after.values == honest.values


@pytest.mark.parametrize("mode, message", [
    ("exit", "SystemExit(3) raised inside the distiller"),
    ("interrupt", "KeyboardInterrupt: "),
    ("hard-exit", "the cell worker exited with status 7 before returning an artifact"),
    ("segfault", "the cell worker was killed by SIGSEGV"),
    ("sigkill", "the cell worker was killed by SIGKILL"),
])
def test_a_plugin_that_ends_its_process_fails_only_its_cell(harness, honest, mode, message):
    broken, after = run(harness, f"misbehave:mode={mode}", "first")
    failed_with(broken, message)
    assert after.status == "ok" and after.values == honest.values


@pytest.mark.slow
def test_the_time_limit_is_enforced_from_outside(harness, monkeypatch):
    monkeypatch.setattr(worker, "grace_s", lambda limit: 1.0)
    sleeper, polite = run(harness, "misbehave:mode=sleep,seconds=60", "misbehave:mode=polite", time_limit=1.0)
    failed_with(sleeper, "exceeded time limit: still distilling 2 s after it started (1 s limit + 1 s grace)")
    assert 1.5 < sleeper.distill_s < 10
    assert polite.status == "ok" and polite.extra["stopped_early"] == 1.0 and 0.9 < polite.distill_s < 3


@pytest.mark.slow
def test_a_cell_that_overran_its_time_limit_inside_the_grace_is_kept_and_marked(harness, tmp_path):
    from ddbench.results.records import OVERRAN, aggregate, result_to_dict
    from ddbench.results.report import summary

    late, polite = run(harness, "misbehave:mode=sleep,seconds=2", "misbehave:mode=polite", time_limit=0.5)
    assert late.status == "ok" and 1.9 < late.distill_s < 10  # 4x its limit, inside the 10 s grace
    assert late.extra[OVERRAN] == pytest.approx(late.distill_s - 0.5)
    assert polite.status == "ok" and polite.extra.get(OVERRAN, 0.0) < 0.5  # it stops at the limit
    text = summary([late, polite], tmp_path / "r.sqlite")
    assert ("cells ran past their time limit and finished inside the grace period (kept, with the seconds over in the boards' "
            "overran_s column):") in text
    assert (f"digits / misbehave / ipc=1 / seed 0 / native: distilled {late.distill_s:.1f} s against a 0.5 s limit "
            f"({late.extra[OVERRAN]:.1f} s over)") in text
    assert any(OVERRAN in row.board_columns() for row in aggregate([result_to_dict(late)]))


def test_peak_memory_is_measured_per_cell(harness):
    hog, after = run(harness, "misbehave:mode=hog", "first")
    assert hog.status == after.status == "ok"
    assert hog.peak_mb > after.peak_mb + 300  # the next cell does not inherit the hog's peak
    assert after.peak_mb > 50  # the worker's own resident memory (torch is imported)


# -- plugin mistakes are named --------------------------------------------------------------------
@pytest.mark.parametrize("mode, message", [
    ("int8-x", "artifact 'x' from 'mistake' is int8: inputs must be float32"),
    ("float64-x", "artifact 'x' from 'mistake' is float64: inputs must be float32"),
    ("labels", "artifact 'y' from 'mistake' holds labels 10..19, outside the task's classes 0..9."),
    ("empty", "distiller 'mistake' returned an artifact with no tensors: store at least 'x' and 'y'."),
    ("no-x", "artifact from 'mistake' has no 'x' tensor (it has inputs, y)"),
    ("no-rows", "artifact 'x' from 'mistake' has no rows: store at least one example."),
])
def test_plugin_mistakes_get_a_message_that_names_the_cause(harness, mode, message):
    (result,) = run(harness, f"mistake:mode={mode}")
    failed_with(result, message)


def test_stored_tracebacks_are_capped(harness):
    (result,) = run(harness, "mistake:mode=long-error")
    failed_with(result, "RuntimeError: failed with a long message")
    assert result.traceback.startswith("Traceback") and len(result.traceback) < 8100
    assert "characters cut" in result.traceback and result.traceback.rstrip().endswith("0.1234")


def test_a_class_a_worker_cannot_import_fails_its_cell_clearly(harness):
    class Unimportable(adversarial.First):
        name = "unimportable"

    import types

    from ddbench import hookimpl

    harness.manager.add(types.SimpleNamespace(ddbench_register_distillers=hookimpl(lambda register: register(Unimportable))), "local")
    (result,) = run(harness, "unimportable")
    failed_with(result, "cannot be sent to a cell worker")
    assert "define it at module level of an importable module" in result.error


# -- keys ---------------------------------------------------------------------------------------
def test_the_cell_key_covers_everything_that_defines_a_result():
    base = {"task": "digits", "task_options": {}, "distiller": "dsa", "distiller_options": {}, "budget": Budget.parse("ipc=1"), "seed": 0,
                "eval_seeds": [0, 1, 2], "learner": "convnet", "learner_options": {}, "profile": "quick"}
    keys = {Cell(**base).key()}
    for change in ({"time_limit_s": 30.0}, {"device_type": "cuda"}, {"results_version": 0}, {"distiller_options": {"lr_img": 10}},
                   {"learner_options": {"width": 64}}, {"task_options": {"seed": 1}}, {"eval_seeds": [0, 1]}, {"profile": "full"}):
        keys.add(Cell(**{**base, **change}).key())
    assert len(keys) == 9
