"""The command line: listings, one-line errors for bad input, exit status counts failed cells."""
from __future__ import annotations

from pathlib import Path

import pytest

from ddbench.cli import main
from ddbench.results.store import ResultStore

ROOT_BOARDS = Path(__file__).resolve().parents[1] / "leaderboards"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.startswith("ddbench: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    (["run", "--task", "digts", "--budget", "ipc=1"], "unknown task 'digts'. Did you mean: digits?"),
    (["run", "--distiller", "radnom"], "unknown distiller 'radnom'. Did you mean: random"),
    (["run", "--task", "digits", "--budget", "ipc=x"], "malformed budget 'ipc=x'"),
    (["run", "--task", "digits"], "--task needs --budget"),
    (["run", "--task", "multi-index", "--budget", "ipc=1"], "regression: ipc budgets do not apply"),
    (["run", "--task", "digits:sed=1", "--budget", "ipc=1", "--distiller", "random"], "'digits' has no option 'sed'. Did you mean: seed?"),
    (["run", "--suite", "missing.toml"], "suite file 'missing.toml' not found"),
    (["run", "--task", "digits", "--budget", "ipc=1", "--learner", "resnet:depth=50"], "bad options for 'resnet'"),
    (["run", "--task", "digits", "--budget", "ipc=1", "--distiller", "dwa:rho=-1"], "bad options for 'dwa'"),
    (["run", "--task", "digits", "--budget", "ipc=1", "--distiller", "dwa:r_var=-1"], "r_var must be >= 0"),
    (["run", "--task", "digits", "--budget", "ipc=1", "--distiller", "sre2l:init=foo"], "unknown init 'foo': use one of noise, real"),
    (["run", "--task", "digits", "--budget", "ipc=2", "--distiller", "seqmatch:windows=30-20"], "interval 30-20 ends before it starts"),
    (["run", "--task", "cifar10:zca=maybe", "--budget", "ipc=1"], "zca must be true or false"),
    (["run", "--task", "mnist1d:zca=true", "--budget", "ipc=1"], "zca whitens (C, H, W) images"),
    (["run", "--task", "digits:teacher_mode=frozen", "--budget", "ipc=1"], "unknown teacher_mode 'frozen'"),
    (["run", "--task", "digits:val_fraction=2", "--budget", "ipc=1"], "bad options for 'digits'"),
])
def test_bad_input_is_one_clear_line(capsys, argv, expected):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert expected in error_line(err)


@pytest.mark.parametrize("text, expected", [
    ("name = 'x'\n[[task]\n", "is not valid TOML"),
    ("[[task]]\nname = 'digits'\nbudget = ['ipc=1']\n", "[[task]] #1: unknown key 'budget'. Did you mean: budgets"),
    ("seeds = 3\n[[task]]\nname = 'digits'\nbudgets = ['ipc=1']\n", "unknown key 'seeds'"),
    ("[[task]]\nname = 'digits'\nbudgets = ['ipc=one']\n", "[[task]] #1 (digits): malformed budget"),
    ("profile = 'slow'\n[[task]]\nname = 'digits'\nbudgets = ['ipc=1']\n", "profile must be one of"),
    ("eval_seeds = 0\n[[task]]\nname = 'digits'\nbudgets = ['ipc=1']\n", "eval_seeds must be a positive integer"),
])
def test_malformed_suite_files(capsys, tmp_path, text, expected):
    path = tmp_path / "suite.toml"
    path.write_text(text)
    code, _, err = run(capsys, "run", "--suite", str(path))
    assert code == 2
    assert expected in error_line(err)


def test_listings(capsys):
    code, out, _ = run(capsys, "ls", "distillers")
    assert code == 0 and "random" in out and "herding" in out and "features='trained'" in out
    code, out, _ = run(capsys, "plugins")
    assert code == 0 and "baselines" in out and "distillers: random, herding, full" in out


@pytest.mark.slow
def test_run_prints_ranked_tables_and_counts_failed_cells(capsys, tmp_path):
    store = tmp_path / "r.sqlite"
    code, out, err = run(capsys, "run", "--store", str(store), "--task", "digits", "--budget", "ipc=1", "--budget", "params=100",
                         "--distiller", "random", "--seeds", "1", "--device", "cpu")
    assert code == 1  # params=100 cannot hold one example per class
    ipc1 = out.split("digits, budget ipc=1: ranked by accuracy under the native protocol\n")[1]
    assert ipc1.splitlines()[0].split() == ["rank", "distiller", "accuracy", "±", "std", "params", "per", "kparam", "vs", "random"]
    assert ipc1.splitlines()[2].split()[:2] == ["1", "random"]
    assert "1 cells failed (their tracebacks are in the store):\n  digits / random / params=100 / seed 0 / native: budget params=100 is below" in out
    assert f"Results: 2 cells (1 ok, 0 skipped, 1 failed) in {store}. Next:" in out
    assert f"ddbench leaderboard --store {store} --out BOARD_DIR --site SITE_DIR" in out and f"ddbench compare OLD.sqlite|results.json {store}" in out
    assert "2 cells" in err and "1 failed" in err
    assert max(len(line) for line in out.splitlines() if str(store) not in line) <= 100  # it fits a terminal


@pytest.mark.slow
def test_run_summarises_skipped_cells_by_reason(capsys, tmp_path):
    code, out, err = run(capsys, "run", "--store", str(tmp_path / "r.sqlite"), "--task", "multi-index", "--budget", "params=800",
                         "--distiller", "dc", "--distiller", "dm", "--distiller", "herding", "--device", "cpu")
    assert code == 0 and ": skipped:" not in err  # not a line per cell on the way
    assert "3 cells skipped, by reason:\n  2 (dc, dm on multi-index): matches per class; task 'multi-index' is regression\n" in out
    assert "  1 (herding on multi-index): selects per class" in out and "ranked by" not in out


# -- bad stores, results files and folders: one line, exit 2, nothing changed -----------------------
def sqlite_with(path, sql):
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute(sql)
    return path


@pytest.fixture
def bad_stores(tmp_path):
    (tmp_path / "folder.sqlite").mkdir()
    (tmp_path / "text.sqlite").write_text("task,distiller\ndigits,random\n")
    (tmp_path / "corrupt.sqlite").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
    sqlite_with(tmp_path / "foreign.sqlite", "CREATE TABLE users (id INTEGER, name TEXT)")
    sqlite_with(tmp_path / "cells.sqlite", "CREATE TABLE cells (key TEXT, value TEXT)")
    malformed_store(tmp_path / "malformed.sqlite")
    return tmp_path


def malformed_store(path):
    """A ddbench store of 60 cells whose pages past the schema's are overwritten with garbage
    (SQLite: "database disk image is malformed" once a query reads them)."""
    from store_writer import fake_result

    with ResultStore(path) as store:
        for i in range(60):
            store.put(fake_result(i))
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 6 * page
    data[2 * page : 6 * page] = bytes((i * 7) & 0xFF for i in range(4 * page))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name, expected", [
    ("folder.sqlite", "is a folder: pass a file path"),
    ("text.sqlite", "is not a results store (not an SQLite file)"),
    ("corrupt.sqlite", "cannot be read (file is not a database): it is corrupt or not a ddbench store"),
    ("foreign.sqlite", "is an SQLite database of something else (tables users), not a ddbench results store"),
    ("cells.sqlite", "has a 'cells' table that is not ddbench's (columns key, value)"),
    ("malformed.sqlite", ("is corrupt (database disk image is malformed); nothing was written to it: move it aside and rerun "
                          "(`sqlite3 {store} .recover | sqlite3 recovered.sqlite` salvages the rows it still holds)")),
])
@pytest.mark.parametrize("command", ["run", "leaderboard", "compare"])
def test_a_bad_store_is_one_line_and_left_as_it_was(capsys, bad_stores, name, expected, command):
    store = bad_stores / name
    before = None if store.is_dir() else store.read_bytes()
    argv = {"run": ["run", "--store", str(store), "--task", "digits", "--budget", "ipc=1", "--distiller", "random"],
            "leaderboard": ["leaderboard", "--store", str(store), "--out", str(bad_stores / "out")],
            "compare": ["compare", str(store), str(store)]}[command]
    if command == "compare" and name == "folder.sqlite":
        expected = "is a folder: pass a results store"
    expected = expected.format(store=store)
    code, _, err = run(capsys, *argv)
    assert code == 2 and expected in error_line(err) and "Traceback" not in err
    assert before is None or store.read_bytes() == before
    assert not (bad_stores / "out").exists()


def test_leaderboard_on_a_missing_store_creates_nothing(capsys, tmp_path):
    code, _, err = run(capsys, "leaderboard", "--store", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "out"))
    assert code == 2 and "results store" in error_line(err) and "not found: run `ddbench run --store" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, expected", [
    ("{not json", "is not a readable results.json (JSONDecodeError)"),
    ('{"a": 1}', "holds no list of result records"),
    ("[1, 2]", "record #1 of"),
    ('[{"config": {"task": "digits"}}]', "lacks distiller, budget, seed, status, values, metric"),
])
def test_a_malformed_results_json_is_one_line(capsys, tmp_path, content, expected):
    path = tmp_path / "results.json"
    path.write_text(content)
    for argv in (["leaderboard", "--results", str(path), "--out", str(tmp_path / "out")], ["compare", str(path), str(path)]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and expected in error_line(err)


@pytest.mark.parametrize("content, expected", [
    ("a,b\n1,2\n", "is not a leaderboard CSV (no column task, distiller, budget, metric, mean)"),
    ("task,distiller,budget,metric,mean\ndigits,random,ipc=1,accuracy,high\n", "line 2 is malformed"),
    (b"\xff\xfe\x00bad", "is not a readable CSV"),
])
def test_a_malformed_csv_is_one_line(capsys, tmp_path, content, expected):
    path = tmp_path / "board.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, _, err = run(capsys, "compare", str(path), str(path))
    assert code == 2 and expected in error_line(err)


@pytest.mark.parametrize("argv, expected", [
    (["--distill-seeds", "2**70"], "--distill-seeds takes comma-separated integers (got '2**70')"),
    (["--distill-seeds", str(2**70)], f"--distill-seeds: a seed must be an integer from 0 to {2**31 - 1} (got {2**70})"),
    (["--distill-seeds", ","], "--distill-seeds needs at least one seed"),
    (["--seeds", "100000"], "--seeds must be a positive integer up to 1000"),
    (["--time-limit", "-1"], "--time-limit must be a positive number of seconds (got -1.0)"),
    (["--time-limit", "nan"], "--time-limit must be a positive number of seconds (got nan)"),
    (["--distill-seeds", "0,0"], "--distill-seeds names seed 0 more than once (0, 0): name each seed once."),
    (["--distill-seeds", "3,1,3,1"], "--distill-seeds names seed 1, 3 more than once (3, 1, 3, 1)"),
    (["--budget", f"params={10**30}"], (f"budget params={10**30} holds more than the whole train split of task 'digits' "
                                        "(1211 examples, 78715 scalars): use a smaller budget")),
    (["--budget", "ipc=122"], "budget ipc=122 holds more than the whole train split of task 'digits' (1211 examples"),
])
def test_bad_run_numbers_are_one_line(capsys, tmp_path, argv, expected):
    code, _, err = run(capsys, "run", "--store", str(tmp_path / "r.sqlite"), "--task", "digits", "--budget", "ipc=1", *argv)
    assert code == 2 and expected in error_line(err)
    assert not (tmp_path / "r.sqlite").exists()


def test_a_file_where_a_folder_belongs_is_one_line(capsys, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    for argv, flag in ((["leaderboard", "--results", str(tmp_path / "r.json"), "--out", str(taken)], "--out"),
                       (["new-plugin", "x-method", "--dir", str(taken)], "--dir"),
                       (["run", "--save-artifacts", str(taken), "--task", "digits", "--budget", "ipc=1"], "--save-artifacts")):
        code, _, err = run(capsys, *argv)
        assert code == 2 and f"{flag} '{taken}' is a file: pass a folder" in error_line(err)
    assert taken.read_text() == "keep me"


def test_a_suite_that_names_a_distillation_seed_twice(capsys, tmp_path):
    path = tmp_path / "suite.toml"
    path.write_text("distill_seeds = [0, 2, 2]\n[[task]]\nname = 'digits'\nbudgets = ['ipc=1']\n")
    code, _, err = run(capsys, "run", "--suite", str(path))
    assert code == 2 and f"{path}: distill_seeds names seed 2 more than once (0, 2, 2): name each seed once." in error_line(err)


def test_a_budget_up_to_the_whole_split_passes_and_a_task_that_cannot_load_is_left_to_its_cells(digits):
    from ddbench.errors import SuiteError, TaskDataError
    from ddbench.results.records import Cell
    from ddbench.run.suite import check_budgets
    from ddbench.vocab import Budget

    _, view, _ = digits
    cell = lambda budget: Cell("digits", {}, "random", {}, Budget.parse(budget), 0, [0], "convnet", {}, "quick")  # noqa: E731
    check_budgets([cell("params=78715"), cell("ipc=121")], lambda *_: view)  # the whole split: 1211 x 65 scalars
    with pytest.raises(SuiteError, match="budget params=78716 holds more than the whole train split"):
        check_budgets([cell("params=78716")], lambda *_: view)

    def absent(*_):
        raise TaskDataError("no files")

    check_budgets([cell("params=78716")], absent)


def test_a_suite_learner_that_is_not_a_name(capsys, tmp_path):
    path = tmp_path / "suite.toml"
    path.write_text("[[task]]\nname = 'digits'\nbudgets = ['ipc=1']\nlearner = 5\n")
    code, _, err = run(capsys, "run", "--suite", str(path))
    assert code == 2 and "[[task]] #1: learner must be a learner's name" in error_line(err)


def test_an_unknown_disabled_plugin_is_a_warning_naming_close_ones(capsys, monkeypatch):
    from ddbench.plugins import reset_plugin_manager

    monkeypatch.setenv("DDBENCH_DISABLE_PLUGINS", "gradmach")
    reset_plugin_manager()
    try:
        code, _, err = run(capsys, "ls", "distillers")
    finally:
        reset_plugin_manager()
    assert code == 0
    (line,) = [l for l in err.splitlines() if l.startswith("ddbench: warning:")]
    assert "DDBENCH_DISABLE_PLUGINS names 'gradmach', which is not an installed plugin" in line and "Did you mean: gradmatch?" in line


def test_leaderboard_suite_filter_takes_the_suites_cells_from_any_device(capsys, tmp_path):
    from ddbench import Budget
    from ddbench.results.records import Cell, CellResult
    from ddbench.results.store import ResultStore

    suite = tmp_path / "suite.toml"
    suite.write_text("name = 's'\neval_seeds = 1\n[[task]]\nname = 'digits'\nbudgets = ['ipc=1']\n[[distiller]]\nname = 'random'\n")
    with ResultStore(tmp_path / "r.sqlite") as store:
        for distiller, device in (("random", "cuda"), ("herding", "cpu")):
            cell = Cell("digits", {}, distiller, {}, Budget.parse("ipc=1"), 0, [0], "convnet", {}, "quick", device_type=device)
            store.put(CellResult(cell, "ok", "accuracy", [60.0], stored_params=650, device=device))
    code, _out, _ = run(capsys, "leaderboard", "--store", str(tmp_path / "r.sqlite"), "--suite", str(suite), "--out", str(tmp_path / "lb"))
    assert code == 0
    text = (tmp_path / "lb" / "digits.md").read_text()
    assert "| random" in text and "herding" not in text


# -- plugin subcommands, reports, the one reader --------------------------------------------------
PLUGIN_COMMANDS = ["ensemble-speed", "gradmatch-timing", "mtt-memory", "theory-measure", "theory-study"]


def test_build_parser_needs_no_arguments_and_has_the_plugin_commands():
    from ddbench.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert set(PLUGIN_COMMANDS) <= set(sub.choices) and {"run", "leaderboard", "compare"} <= set(sub.choices)


@pytest.mark.parametrize("command", [*PLUGIN_COMMANDS, "leaderboard"])
def test_every_subcommand_has_help(capsys, command):
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0 and f"usage: ddbench {command}" in capsys.readouterr().out


def test_plugins_lists_commands_and_reports(capsys):
    code, out, _ = run(capsys, "plugins")
    assert code == 0 and "commands: theory-measure, theory-study; reports: theory-study" in out and "commands: mtt-memory" in out


def stored_result(store, distiller: str, accuracy: float, budget: str | None = "ipc=1"):
    from ddbench import Budget
    from ddbench.results.records import Cell, CellResult

    cell = Cell("digits", {}, distiller, {}, Budget.parse(budget) if budget else None, 0, [0], "convnet", {}, "quick")
    result = CellResult(cell, "ok", "accuracy", [accuracy], stored_params=650, compression=1.0, device="cpu",
                        higher_is_better={"accuracy": True})
    store.put(result)
    return result


def test_leaderboard_reads_several_stores_and_counts_a_cell_once(capsys, tmp_path):
    from ddbench.results.store import ResultStore

    with ResultStore(tmp_path / "a.sqlite") as a, ResultStore(tmp_path / "b.sqlite") as b:
        stored_result(a, "random", 60.0)
        stored_result(b, "random", 61.0)  # the same cell, finished later: it replaces the first
        stored_result(b, "herding", 70.0)
    code, _out, _ = run(capsys, "leaderboard", "--store", str(tmp_path / "a.sqlite"), "--store", str(tmp_path / "b.sqlite"),
                       "--out", str(tmp_path / "lb"), "--report", "boards")
    assert code == 0 and sorted(p.name for p in (tmp_path / "lb").iterdir()) == ["digits.csv", "digits.md", "digits.png", "results.json"]
    text = (tmp_path / "lb" / "digits.md").read_text()
    lines = [[c.strip() for c in l.split("|")[1:5]] for l in text.splitlines() if l.startswith(("| 1 ", "| 2 "))]
    assert lines == [["1", "herding", "70.00 ± 0.00", "1"], ["2", "random", "61.00 ± 0.00", "1"]]


def test_leaderboard_report_choices_are_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "leaderboard", "--results", str(tmp_path / "r.json"), "--report", "bords")
    assert code == 2 and "unknown report 'bords' in --report. Did you mean: boards?" in error_line(err)


def test_leaderboard_refuses_a_board_csv_as_records(capsys, tmp_path):
    path = tmp_path / "board.csv"
    path.write_text("task,distiller,budget,metric,mean\ndigits,random,ipc=1,accuracy,60\n")
    code, _, err = run(capsys, "leaderboard", "--results", str(path), "--out", str(tmp_path / "lb"))
    assert code == 2 and "is a leaderboard CSV: it holds aggregated rows, not cell records" in error_line(err)


def test_run_summary_ranks_as_the_board_and_shows_budget_exempt_rows_as_references(tmp_path):
    from ddbench.results.report import summary
    from ddbench.results.store import ResultStore

    with ResultStore(tmp_path / "r.sqlite") as store:
        stored_result(store, "random", 60.0)
        stored_result(store, "herding", 70.0)
        stored_result(store, "full", 98.0, budget=None)
        records = store.records()
    text = summary(records, tmp_path / "r.sqlite")
    table = text.split("digits, budget ipc=1: ranked by accuracy under the native protocol\n")[1].split("\n\n")[0]
    assert [l.split()[:2] for l in table.splitlines()[2:]] == [["1", "herding"], ["2", "random"], ["ref", "full"]]
    assert "(none)" not in text and "ref: a reference, not ranked" in " ".join(text.split()) and "common" not in text


def test_results_modules_import_neither_torch_nor_the_harness():
    import ast
    from pathlib import Path

    import ddbench.results

    for path in sorted(Path(ddbench.results.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        heavy = {m for m in imported if m.split(".")[0] == "torch" or m in ("ddbench.run.harness", "ddbench.run.worker")}
        at_top = {m for node in tree.body if isinstance(node, ast.ImportFrom) and (m := node.module) == "ddbench.contracts.interfaces"}
        assert not heavy and not at_top, f"{path.name} imports {sorted(heavy | at_top)}"


def test_theory_study_board_only_without_results_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "theory-study", "--board-only", "--out", str(tmp_path))
    assert code == 2 and "no study results at" in error_line(err) and "ddbench theory-study --out" in error_line(err)


@pytest.mark.slow
@pytest.mark.parametrize("argv, expected", [
    (["gradmatch-timing", "--task", "digits", "--ipc", "1", "--methods", "dm", "--dm-iterations", "1", "--profile", "quick",
      "--device", "cpu"], "| dm | 1 | "),
    (["mtt-memory", "--device", "cpu", "--task", "digits", "--ipc", "1", "--syn-steps", "2", "--modes", "unroll",
      "--iterations", "1"], "unroll                           2"),
    (["ensemble-speed", "--device", "cpu", "--k", "2", "--shape", "mnist", "--ipc", "1", "--width", "8", "--epochs", "2",
      "--accuracy-epochs", "1"], "ensemble (vmap)"),
])
def test_measurement_subcommands_run_at_tiny_sizes(capsys, argv, expected):
    code, out, _ = run(capsys, *argv)
    assert code == 0 and expected in out


def test_protocol_flags_set_the_suites_protocols():
    from ddbench.cli import build_parser, suite_from_args

    def protocols(*argv):
        return suite_from_args(build_parser().parse_args(["run", *argv])).protocols

    assert protocols() == ["native"]  # the default suite: each method's own recipe
    assert protocols("--task", "digits", "--budget", "ipc=1") == ["native"]  # an ad hoc run: native unless asked
    assert protocols("--task", "digits", "--budget", "ipc=1", "--protocol", "native", "--protocol", "common") == ["native", "common"]
    assert protocols("--protocol", "native", "--protocol", "common") == ["native", "common"]
    assert protocols("--protocol", "common") == ["common"]
