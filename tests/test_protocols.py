"""Evaluation protocols (docs/design.md §4): ``native`` (each method's declared recipe over the
task's) and ``common`` (the task's one recipe for every row); a distillation runs once for both;
one board per (task, protocol); the ``trained model`` reference row beside ``full``."""
from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from ddbench import Artifact, Budget, Distiller, hookimpl
from ddbench.cli import main
from ddbench.contracts.interfaces import Task
from ddbench.contracts.recipe import Recipe, evaluation_recipe
from ddbench.errors import StoreError, SuiteError
from ddbench.plugins import PluginManager, instantiate
from ddbench.results.leaderboard import TRAINED, markdown, pages, write
from ddbench.results.records import Cell, CellResult, aggregate, check_record, result_to_dict
from ddbench.results.store import read_results
from ddbench.run import worker
from ddbench.run.harness import Harness
from ddbench.run.suite import DistillerEntry, Suite, TaskEntry, default_suite, expand_suite, has_common_protocol, load_suite, parse_suite
from ddbench.testing import TinyClassification
from ddbench.vocab import PROTOCOL_FIELDS, protocol_part

STRATEGY = "color_crop_cutout_scale_rotate"
DECLARED = {"epochs": 3, "augment": "none", "batch_size": 8, "labels": "class-balanced"}


class TinyCommon(TinyClassification):
    """The kit's tiny classification task at CPU-test sizes, with a common protocol."""

    name = "tiny-common"

    def recipe(self, profile):
        return Recipe(epochs=2, batch_size=16, dsa_strategy=STRATEGY)

    def common_recipe(self, profile):
        return self.recipe(profile).updated({"augment": "dsa", "epochs": 1, "batch_size": 32})


class TinyNoCommon(TinyCommon):
    """Overrides ``common_recipe`` but has none for its options: its common cells are skipped."""

    name = "tiny-no-common"

    def common_recipe(self, profile):
        return None


class Declaring(Distiller):
    """The first ``ipc`` train examples of each class, class by class; declares protocol fields and implied labels."""

    name = "declaring"

    def distill(self, task, budget, learner, context):
        ipc = budget.ipc(task)
        idx = [int(i) for c in range(task.num_classes) for i in task.class_index(c)[:ipc]]
        return Artifact({"x": task.train.x[idx].clone()}, recipe=dict(DECLARED))


class Matching(Declaring):
    """Declares exactly the tiny task's common recipe, so its native cell trains as its common one."""

    name = "matching"

    def distill(self, task, budget, learner, context):
        artifact = super().distill(task, budget, learner, context)
        artifact.recipe = {"augment": "dsa", "epochs": 1, "batch_size": 32, "labels": "class-balanced"}
        return artifact


@pytest.fixture(scope="module")
def pm():
    manager = PluginManager()
    manager.load_entrypoints()
    manager.add(types.SimpleNamespace(
        ddbench_register_distillers=hookimpl(lambda register: [register(c) for c in (Declaring, Matching)]),
        ddbench_register_tasks=hookimpl(lambda register: [register(c) for c in (TinyCommon, TinyNoCommon)])), "protocols-test")
    return manager


def suite(task: str = "tiny-common", protocols=("native", "common"), distillers=("declaring", "random", "full")) -> Suite:
    entries = [DistillerEntry(d, {"epochs": 1} if d == "full" else {}) for d in distillers]  # full: 1 epoch, fast
    return Suite("p", [TaskEntry(task, [Budget.parse("ipc=1")])], entries, "quick", 2, [0],
                 protocols=list(protocols))


@pytest.fixture(scope="module")
def ran(pm, tmp_path_factory):
    """Both protocols of declaring, random and full on tiny-common, counting the distillations."""
    calls = []
    real = worker.distill

    def counting(request, *args):
        calls.append(request.distiller.name)
        return real(request, *args)

    worker.distill = counting
    try:
        results = Harness(pm, "cpu", cache_dir=tmp_path_factory.mktemp("cache")).run(suite())
    finally:
        worker.distill = real
    return results, calls


def records_of(results: list[CellResult]) -> list[dict]:
    return [{**result_to_dict(r), "key": r.cell.key(), "finished_at": "2026-12-01T00:00:00Z",
             "provenance": {"ddbench": "0", "commit": "abc", "torch": "2", "python": "3"}} for r in results]


# -- the recipe ------------------------------------------------------------------------------
def test_common_sets_aside_the_declared_protocol_fields_only():
    base, common = Recipe(epochs=300), Recipe(epochs=1000, augment="dc")
    declared = {"epochs": 1000, "augment": "dsa", "batch_size": 128, "dsa_strategy": STRATEGY,
                "lr_from_artifact": "lr", "labels": "class-balanced", "options": {"k": 1}}
    native = evaluation_recipe(base, declared, "native")
    assert (native.epochs, native.augment, native.batch_size, native.dsa_strategy) == (1000, "dsa", 128, STRATEGY)
    shared = evaluation_recipe(common, declared, "common")
    assert protocol_part(shared.as_dict()) == protocol_part(common.as_dict())
    assert (shared.lr_from_artifact, shared.labels, shared.options) == ("lr", "class-balanced", {"k": 1})
    assert set(PROTOCOL_FIELDS) == {"epochs", "batch_size", "augment", "dsa_strategy"}
    with pytest.raises(SuiteError, match="unknown protocol 'comon'. Did you mean: common"):
        evaluation_recipe(base, {}, "comon")


# -- suites and cells ------------------------------------------------------------------------
def test_the_protocols_key_defaults_to_native_and_is_validated():
    table = {"task": [{"name": "digits", "budgets": ["ipc=1"]}]}
    assert parse_suite(table).protocols == ["native"]
    assert parse_suite({**table, "protocols": ["common", "native"]}).protocols == ["common", "native"]
    for bad, message in ((["nativ"], "unknown protocol 'nativ'. Did you mean: native"), ([], "needs at least one protocol"),
                         (["common", "common"], "names a protocol twice"), ("common", "protocols must be a list")):
        with pytest.raises(SuiteError, match=message):
            parse_suite({**table, "protocols": bad}, "s.toml")
    assert default_suite().protocols == ["native"]  # the front door: each method's own recipe
    board = Path(__file__).resolve().parents[1] / "leaderboards" / "suites" / "protocols.toml"
    assert load_suite(board).protocols == ["native", "common"]  # the board of both


def test_common_cells_only_for_tasks_with_a_common_recipe_next_to_their_native_cell(pm):
    assert has_common_protocol(TinyCommon) and not has_common_protocol(TinyClassification)
    assert has_common_protocol(pm.tasks.get("digits")) and not has_common_protocol(pm.tasks.get("mnist1d"))
    both = Suite("p", [TaskEntry("digits", [Budget.parse("ipc=1"), Budget.parse("ipc=2")]),
                       TaskEntry("multi-index", [Budget.parse("params=800")], {"d": 8, "r": 1})],
                 [DistillerEntry("random"), DistillerEntry("full")], "quick", 1, [0, 1], protocols=["native", "common"])
    cells = list(expand_suite(pm, both))
    digits = [(c.distiller, str(c.budget), c.seed, c.protocol) for c in cells if c.task == "digits"]
    assert digits[:4] == [("random", "ipc=1", 0, "native"), ("random", "ipc=1", 0, "common"),
                          ("random", "ipc=1", 1, "native"), ("random", "ipc=1", 1, "common")]
    assert len(digits) == (2 + 1) * 2 * 2  # (budgets + full) x seeds x protocols
    assert {c.protocol for c in cells if c.task == "multi-index"} == {"native"}
    only_common = Suite("p", [TaskEntry("multi-index", [Budget.parse("params=800")])], [DistillerEntry("random")],
                        protocols=["common"])
    with pytest.warns(UserWarning, match="'multi-index' has no common protocol"):
        assert list(expand_suite(pm, only_common)) == []


def test_the_protocol_is_part_of_the_key_and_old_records_are_native():
    cell = Cell("digits", {}, "dsa", {}, Budget.parse("ipc=1"), 0, [0], "convnet", {}, "quick")
    common = Cell(**{**cell.__dict__, "protocol": "common"})
    assert cell.config()["protocol"] == "native" and cell.key() != common.key()
    assert cell.distillation() == common.distillation()
    config = {k: v for k, v in cell.config().items() if k != "protocol"}  # as stored before protocols
    import hashlib
    assert cell.key() == hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]  # old stores keep their cells
    old = {"config": config, "status": "ok", "values": [1.0], "metric": "accuracy"}
    assert check_record(old, "r")["config"]["protocol"] == "native" and check_record(old, "r")["model_params"] == 0
    with pytest.raises(StoreError, match="protocol 'shared' is not native or common"):
        check_record({**old, "config": {**config, "protocol": "shared"}}, "r")


# -- the harness -----------------------------------------------------------------------------
def test_a_common_cell_reuses_the_native_distillation(ran):
    results, calls = ran
    assert [(r.cell.distiller, r.cell.protocol, r.status) for r in results] == [
        (d, p, "ok") for d in ("declaring", "random", "full") for p in ("native", "common")]
    assert calls == ["declaring", "random", "full"]  # one distillation per pair of cells
    for native, common in zip(results[::2], results[1::2]):
        assert (common.distill_s, common.stored_params) == (native.distill_s, native.stored_params)


def test_an_evaluation_identical_to_an_earlier_one_is_reused(pm, tmp_path):
    native, common = Harness(pm, "cpu", cache_dir=tmp_path).run(suite(distillers=("matching",)))
    assert native.recipe == common.recipe and (native.status, common.status) == ("ok", "ok")
    assert "reused" not in native.eval_mode
    assert "reused: an identical evaluation earlier in this run" in common.eval_mode  # one set of nets for both cells
    assert common.values == native.values and common.eval_s == native.eval_s
    harness = Harness(pm, "cpu", cache_dir=tmp_path)
    declaring = harness.run(suite(distillers=("declaring",)))
    assert not any("reused" in r.eval_mode for r in declaring)  # its recipes differ: each cell trains its own nets
    *_, random_common = Harness(pm, "cpu", cache_dir=tmp_path).run(suite(distillers=("matching", "random")))
    assert "reused" in random_common.eval_mode  # trained already as matching's reference: same subset, recipe, seeds
    assert random_common.mean == random_common.random_ref
    again = harness.run(suite(distillers=("matching",)))
    assert "reused" not in again[0].eval_mode and again[0].values == native.values  # a new run trains again


def test_each_cell_trains_with_its_protocols_recipe(ran):
    results, _ = ran
    task = TinyCommon()
    declared = {"declaring": DECLARED, "random": {}, "full": {"epochs": 1}}  # full: its option
    for r in results:
        if r.cell.protocol == "common":
            expected = protocol_part(task.common_recipe("quick").as_dict())
        else:
            expected = protocol_part(task.recipe("quick").updated(declared[r.cell.distiller]).as_dict())
        assert protocol_part(r.recipe) == expected, r.cell.label
    common = next(r for r in results if r.cell.distiller == "declaring" and r.cell.protocol == "common")
    assert common.recipe["labels"] == "class-balanced"  # not a protocol field: still the artifact's
    random_common = next(r for r in results if r.cell.distiller == "random" and r.cell.protocol == "common")
    assert random_common.random_ref == random_common.mean  # the reference trained with the common recipe too


def test_the_evaluation_nets_parameter_count_is_recorded(ran, pm):
    results, _ = ran
    task = TinyCommon()
    from ddbench.run.suite import task_view

    view = task_view(task, task.load(), "cpu")
    model = instantiate(pm.learners.get("convnet"), {}, "quick").build(view, 0)
    assert {r.model_params for r in results} == {sum(p.numel() for p in model.parameters())}


def test_a_task_without_a_common_recipe_for_its_options_skips_its_common_cells(pm, tmp_path):
    results = Harness(pm, "cpu", cache_dir=tmp_path).run(suite("tiny-no-common", distillers=("random",)))
    assert [(r.cell.protocol, r.status) for r in results] == [("native", "ok"), ("common", "skipped")]
    assert "has no common protocol" in results[1].error
    write(records_of(results), tmp_path / "lb")
    assert sorted(p.name for p in (tmp_path / "lb").glob("*.md")) == ["tiny-no-common.md"]  # a skipped cell makes no board


# -- boards ----------------------------------------------------------------------------------
def test_one_board_per_task_and_protocol_stating_it(ran, tmp_path):
    results, _ = ran
    records = records_of(results)
    write(records, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("tiny-common*")) == [
        "tiny-common-common.csv", "tiny-common-common.md", "tiny-common-common.png", "tiny-common.csv", "tiny-common.md",
        "tiny-common.png"]
    native, common = (tmp_path / "tiny-common.md").read_text(), (tmp_path / "tiny-common-common.md").read_text()
    assert native.startswith("# ddbench leaderboard: tiny-common\n") and "- Protocol: native:" in native
    assert common.startswith("# ddbench leaderboard: tiny-common (common protocol)\n")
    assert f"- Protocol: common: every row trained with the task's one recipe (`epochs` 1, `batch_size` 32, `augment` dsa, `dsa_strategy` {STRATEGY})" in common
    assert "[tiny-common-common.md](tiny-common-common.md)" in native and "[tiny-common.md](tiny-common.md)" in common
    for text in (native, common):
        assert "| random " in text and "| full " in text  # the baselines are on both boards
        assert "## Native and common protocols side by side" in text
    side = [[c.strip() for c in l.split("|")[1:-1]] for l in common.split("side by side")[1].splitlines() if l.startswith("| random")]
    rows = {(r.distiller, r.protocol): r for r in aggregate(records)}
    assert side == [["random", "ipc=1", f"{rows['random', 'native'].mean:.2f}", f"{rows['random', 'common'].mean:.2f}",
                     f"{rows['random', 'common'].mean - rows['random', 'native'].mean:+.2f}"]]
    regenerate = "ddbench leaderboard --results x --out y"
    assert set(pages(aggregate(records), records, regenerate)) == {"tiny-common.md", "tiny-common-common.md"}


def test_every_row_on_a_board_trained_with_its_protocols_recipe(ran, tmp_path):
    """Read back from the written results.json: common boards hold the task's common recipe, native
    boards the task's recipe updated by the method's declaration."""
    results, _ = ran
    write(records_of(results), tmp_path)
    task, declared = TinyCommon(), {"declaring": DECLARED, "random": {}, "full": {"epochs": 1}}
    records = read_results(tmp_path / "results.json").records
    for row in aggregate(records):
        cells = [r for r in records if r["config"]["distiller"] == row.distiller and r["config"]["protocol"] == row.protocol]
        expected = (task.common_recipe("quick") if row.protocol == "common" else task.recipe("quick").updated(declared[row.distiller]))
        assert cells and all(protocol_part(r["recipe"]) == protocol_part(expected.as_dict()) for r in cells), row.label


def test_the_trained_model_row_is_a_reference_at_the_nets_parameter_count(ran, tmp_path):
    results, _ = ran
    records = records_of(results)
    rows = aggregate(records)
    full = next(r for r in rows if r.distiller == "full" and r.protocol == "native")
    text = markdown("tiny-common", rows, records, "regen")
    (line,) = [l for l in text.splitlines() if l.startswith(f"| ref    | {TRAINED}")]
    cells = [c.strip() for c in line.split("|")[1:-1]]
    params = results[0].model_params
    assert cells[2] == f"{full.mean:.2f} ± {full.std:.2f}" and cells[4] == str(params)
    assert cells[5] == format(full.mean / (params / 1000), ".4g") and cells[6] == ""
    assert cells[7] == f"{full.stored_params * full.compression / params:.1f}x"
    assert "`trained model` is the learner trained on the whole train split" in text
    old = [dict(r, model_params=0) for r in records]  # records from before the count: no such row
    assert TRAINED not in markdown("tiny-common", aggregate(old), old, "regen")


def test_compare_matches_rows_by_protocol(ran, tmp_path, capsys):
    results, _ = ran
    records = records_of(results)
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(records))
    new.write_text(json.dumps([r for r in records if r["config"]["protocol"] == "native"]))
    assert main(["compare", str(old), str(old)]) == 0
    assert main(["compare", str(old), str(new)]) == 1  # the common rows are missing, never compared with native ones
    flagged = [l for l in capsys.readouterr().out.splitlines() if "REGRESSION" in l]
    assert len(flagged) == 3 and all("(cell)" in l and "missing" in l for l in flagged)


# -- the command line ------------------------------------------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["--protocol", "comon"], "--protocol: unknown protocol 'comon'. Did you mean: common?"),
    (["--protocol", "native", "--protocol", "native"], "--protocol names a protocol twice"),
])
def test_bad_protocol_flags_are_one_line(capsys, tmp_path, argv, expected):
    code = main(["run", "--store", str(tmp_path / "r.sqlite"), "--task", "digits", "--budget", "ipc=1", "--distiller", "random", *argv])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and not (tmp_path / "r.sqlite").exists()


def test_task_common_recipe_defaults_to_none():
    assert Task.common_recipe(TinyClassification(), "quick") is None


def test_the_run_summary_ranks_native_and_shows_common_beside(ran):
    from ddbench.results.report import summary

    results, _ = ran
    text = summary(results, "r.sqlite")
    table = text.split("tiny-common, budget ipc=1: ranked by accuracy under the native protocol\n")[1].split("\n\n")[0]
    header, _, *lines = table.splitlines()
    assert header.split()[-1] == "common" and "common: the metric under the common protocol" in " ".join(text.split())
    native = {r.cell.distiller: r for r in results if r.cell.protocol == "native" and r.cell.budget}
    common = {r.cell.distiller: r for r in results if r.cell.protocol == "common" and r.cell.budget}
    for line in lines:
        rank, name, *_, beside = line.split()
        if rank != "ref":
            assert beside == f"{common[name].mean:.2f}" and f"{native[name].mean:.2f} ±" in line
