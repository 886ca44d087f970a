"""The command line: listings, one-line errors for bad input, exit status counts failed cells."""
from __future__ import annotations

import pytest

from ddbench.cli import main


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


def test_run_prints_table_and_counts_failed_cells(capsys, tmp_path):
    code, out, err = run(capsys, "run", "--store", str(tmp_path / "r.sqlite"), "--task", "digits", "--budget", "ipc=1", "--budget", "params=100",
                         "--distiller", "random", "--seeds", "1", "--device", "cpu")
    assert code == 1  # params=100 cannot hold one example per class
    assert any(l.startswith("| digits | random") and "ipc=1" in l and "| ok" in l for l in out.splitlines())
    assert "failed: budget params=100 is below one example per class" in out
    assert "2 cells" in err and "1 failed" in err
