"""Leaderboards regenerate byte for byte; ``ddbench compare`` flags planted regressions."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ddbench import Budget
from ddbench.cli import main
from ddbench.results.leaderboard import pages, pareto, write
from ddbench.results.records import Cell, CellResult, aggregate, result_to_dict
from ddbench.results.store import read_results

ROOT = Path(__file__).resolve().parents[1]


def record(distiller: str, budget: str | None, values: list[float], seed: int = 0, distill_s: float = 2.0,
           params: int = 650, ref: float | None = 60.0) -> dict:
    cell = Cell("digits", {}, distiller, {}, Budget.parse(budget) if budget else None, seed, [0, 1], "convnet", {}, "quick")
    result = CellResult(cell, "ok", "accuracy", values, stored_params=params, compression=121.1, distill_s=distill_s,
                        eval_s=1.0, peak_mb=300.0, device="cpu", random_ref=ref, higher_is_better={"accuracy": True})
    return {**result_to_dict(result), "key": cell.key(), "finished_at": "2026-11-22T00:00:00Z",
            "provenance": {"ddbench": "0.1.0", "commit": "abc", "torch": "2", "python": "3.11", "plugins": {}}}


RECORDS = [record("random", "ipc=1", [60.0, 62.0]), record("herding", "ipc=1", [70.0, 74.0]),
           record("herding", "ipc=1", [72.0, 72.0], seed=1), record("full", None, [98.0, 98.0], params=78715, ref=None),
           record("random", "ipc=10", [90.0, 91.0], params=6500, ref=90.5)]


def test_aggregate_over_seeds():
    rows = {(r.distiller, r.budget): r for r in aggregate(RECORDS)}
    herding = rows[("herding", "ipc=1")]
    assert herding.values == [70.0, 74.0, 72.0, 72.0] and herding.seeds == [0, 1]
    assert herding.mean == pytest.approx(72.0) and herding.gain_vs_random == pytest.approx(12.0)
    assert herding.metric_per_kparam == pytest.approx(72.0 / 0.65)


def test_pareto_front():
    assert pareto([(650, 72), (650, 61), (6500, 90), (6500, 70), (78715, 98)]) == [(650, 72), (6500, 90), (78715, 98)]


def test_leaderboard_regenerates_byte_for_byte(tmp_path):
    out = tmp_path / "lb"
    write(RECORDS, out)
    first = (out / "digits.md").read_bytes()
    assert b"| 1      | herding" in first and b"| ref    | full" in first and b"## Budget ipc=10" in first
    assert main(["leaderboard", "--results", str(out / "results.json"), "--out", str(out)]) == 0
    assert (out / "digits.md").read_bytes() == first
    assert (out / "digits.png").stat().st_size > 1000 and (out / "digits.csv").read_text().startswith("task,distiller,budget")


def test_a_table_whose_rows_store_more_than_images_breaks_their_storage_down():
    staged = {**record("staged", "ipc=10", [91.0, 92.0], params=6404), "by_tensor": {"x": 6400, "stage.end": 2, "stage.lr": 2}}
    generated = {**record("generated", "ipc=10", [90.0, 90.0], params=6485),
                 "by_tensor": {"x": 5700, "y": 1000, "gen.inp.weight": 600, "gen.out.bias": 1}}
    plain = {**record("random", "ipc=1", [60.0, 62.0]), "by_tensor": {"x": 640, "y": 10}}
    rows = {r.distiller: r for r in aggregate([staged, generated, plain])}
    assert list(rows["generated"].by_tensor.items()) == [("gen", 601), ("x", 5700), ("y", 1000)]  # a generator's weights summed
    md = pages(aggregate([staged, generated, plain]), [staged, generated, plain], "regen")["digits.md"]
    ipc1, ipc10 = md.split("## Budget ipc=10")
    assert "stored by tensor" not in ipc1  # inputs and labels only: no column
    assert "stored by tensor" in ipc10 and "stage.end 2 · stage.lr 2 · x 6400" in ipc10 and "gen 601 · x 5700 · y 1000" in ipc10


@pytest.mark.parametrize("board", ["default", "protocols", "mnist5k", "analyses", "staged"])
def test_committed_leaderboards_reproduce(board):
    folder = ROOT / "leaderboards" / board
    if not (folder / "results.json").is_file():
        pytest.fail(f"leaderboards/{board}/results.json is missing: regenerate with `ddbench leaderboard --out leaderboards/{board}`")
    committed = {p.name: p.read_bytes() for p in folder.glob("*.md")}
    records = read_results(folder / "results.json").records
    rows = aggregate(records)
    regenerate = f"ddbench leaderboard --results leaderboards/{board}/results.json --out leaderboards/{board}"
    regenerated = pages(rows, records, regenerate)
    assert sorted(regenerated) == sorted(committed)  # a board per (task, protocol), none left over
    for name, text in committed.items():
        assert regenerated[name].encode() == text, name
    assert all("higher_is_better" in r and "leaderboard_columns" in r for r in records)  # no direction table to fall back on


@pytest.mark.slow
def test_committed_multi_index_board_reproduces():
    from ddbench_theory import board

    folder = ROOT / "leaderboards"
    payload = json.loads((folder / "multi-index.json").read_text())
    assert board.markdown(payload) == (folder / "multi-index.md").read_text()
    assert board.to_csv(payload["results"]) == (folder / "multi-index.csv").read_text()


def write_json(path: Path, records: list[dict]) -> str:
    path.write_text(json.dumps(records))
    return str(path)


def test_compare_flags_planted_regressions(tmp_path, capsys):
    old = write_json(tmp_path / "old.json", RECORDS)
    rules = ["--fail-on", "accuracy:-1.0", "--fail-on", "distill_s:+20%"]
    assert main(["compare", old, old, *rules]) == 0
    capsys.readouterr()
    dropped = [dict(r, values=[v - 2.0 for v in r["values"]]) if r["config"]["distiller"] == "herding" else r for r in RECORDS]
    assert main(["compare", old, write_json(tmp_path / "drop.json", dropped), *rules]) == 1
    flagged = [l.split("|")[1:-1] for l in capsys.readouterr().out.splitlines() if "REGRESSION" in l]
    assert [[c.strip() for c in l] for l in flagged] == [["digits", "herding", "ipc=1", "accuracy", "72", "70", "-2", "-1", "REGRESSION"]]
    slower = [dict(r, distill_s=r["distill_s"] * 1.5) for r in RECORDS]
    assert main(["compare", old, write_json(tmp_path / "slow.json", slower), *rules]) == 1
    flagged = [[c.strip() for c in l.split("|")[1:-1]] for l in capsys.readouterr().out.splitlines() if "REGRESSION" in l]
    assert len(flagged) == 4 and all(f[3:] == ["distill_s", "2", "3", "+50%", "+20%", "REGRESSION"] for f in flagged)
    missing = RECORDS[:-1]
    assert main(["compare", old, write_json(tmp_path / "missing.json", missing), *rules]) == 1


def test_compare_reads_leaderboard_csvs(tmp_path):
    write(RECORDS, tmp_path / "a")
    csv = str(tmp_path / "a" / "digits.csv")
    assert main(["compare", csv, csv, "--fail-on", "accuracy:-0.5"]) == 0


@pytest.mark.parametrize("rule, message", [("accuracy:+1", "a regression is a drop: write accuracy:-1"),
                                           ("distill_s:-20%", "a regression is a rise: write distill_s:+20%"),
                                           ("acuracy:-1", "Did you mean: accuracy"), ("accuracy", "malformed --fail-on")])
def test_compare_rule_errors(tmp_path, capsys, rule, message):
    old = write_json(tmp_path / "old.json", RECORDS)
    assert main(["compare", old, old, "--fail-on", rule]) == 2
    assert message in capsys.readouterr().err


def configured(distiller: str, values: list[float], options: dict | None = None, time_limit: float | None = None,
               learner: str = "convnet", version: int | None = None) -> dict:
    rec = record(distiller, "ipc=1", values)
    rec["config"] = {**rec["config"], "distiller_options": options or {}, "time_limit_s": time_limit, "learner": learner}
    if version is not None:
        rec["config"]["results_version"] = version
    return rec


SETTINGS = [configured("dsa", [80.0]), configured("dsa", [85.0], {"lr_img": 10}), configured("dsa", [70.0], time_limit=30.0),
            configured("dsa", [60.0], learner="mlp"), configured("random", [50.0])]


def test_rows_with_different_settings_stay_apart_and_say_how(tmp_path):
    rows = aggregate(SETTINGS)
    assert sorted((r.label, r.mean) for r in rows) == [
        ("dsa", 80.0), ("dsa (lr_img=10)", 85.0), ("dsa [learner: mlp]", 60.0), ("dsa [time limit: 30 s]", 70.0), ("random", 50.0)]
    write(SETTINGS, tmp_path)
    text = (tmp_path / "digits.md").read_text()
    assert "| 1      | dsa (lr_img=10)" in text and "| 4      | dsa [learner: mlp]" in text
    assert "Settings: device type: cpu, eval seeds: 0,1, learner: convnet, profile: quick, results version: 1, time limit: none;" in text


def test_compare_never_compares_rows_of_different_settings(tmp_path, capsys):
    old = write_json(tmp_path / "old.json", SETTINGS)
    changed = [configured("dsa", [80.0], {"lr_img": 1}), *SETTINGS[1:]]  # the plain dsa row is gone
    assert main(["compare", old, write_json(tmp_path / "new.json", changed)]) == 1
    flagged = [[c.strip() for c in l.split("|")[1:-1]] for l in capsys.readouterr().out.splitlines() if "REGRESSION" in l]
    assert flagged == [["digits", "dsa", "ipc=1", "(cell)", "ok", "missing", "", "", "REGRESSION"]]
    newer = [dict(r, config={**r["config"], "results_version": 2}) for r in SETTINGS]  # another ddbench version: compared
    assert main(["compare", old, write_json(tmp_path / "newer.json", newer)]) == 0


def directed(distiller: str, error: float, budget: str = "params=100", higher: bool = False) -> dict:
    """A record of a task whose headline metric is lower-is-better, declared by the task (no table)."""
    rec = record(distiller, budget, [error])
    return {**rec, "config": {**rec["config"], "task": "toy"}, "metric": "error", "random_ref": None,
            "higher_is_better": {"error": higher}, "leaderboard_columns": ["bits"], "extra": {"bits": 3.0, "hidden": 1.0}}


def test_boards_rank_in_the_direction_the_records_state(tmp_path):
    write([directed("a", 0.5), directed("b", 0.2), directed("c", 0.9)], tmp_path)
    text = (tmp_path / "toy.md").read_text()
    ranked = [[c.strip() for c in l.split("|")[1:3]] for l in text.splitlines() if l[:3] == "| 1" or l[:3] == "| 2" or l[:3] == "| 3"]
    assert ranked == [["1", "b"], ["2", "a"], ["3", "c"]] and "Ranked by mean error (lower is better)" in text
    assert "| bits " in text and "hidden" not in text  # declared extras are columns; the rest stays in results.json
    header, first = (tmp_path / "toy.csv").read_text().splitlines()[:2]
    assert header.endswith(",regime,reference_regime,bits") and first.endswith(",false,hard,hard,3")  # the declared extra too


def test_a_board_whose_records_state_no_direction_says_so(tmp_path):
    rec = {**directed("a", 0.5), "higher_is_better": {}}
    write([rec], tmp_path)
    assert "Ranked by mean error (higher is better, assumed: the records do not say)" in (tmp_path / "toy.md").read_text()


def test_compare_takes_directions_from_the_records(tmp_path, capsys):
    old = write_json(tmp_path / "old.json", [directed("a", 0.5)])
    worse = write_json(tmp_path / "new.json", [directed("a", 0.7)])
    assert main(["compare", old, worse, "--fail-on", "error:+0.1"]) == 1
    assert main(["compare", old, worse, "--fail-on", "error:-0.1"]) == 2
    assert "error is lower-is-better, so a regression is a rise: write error:+0.1" in capsys.readouterr().err
    assert main(["compare", old, worse, "--fail-on", "bits:+1"]) == 2  # no record says which way bits is better
    assert "unknown metric 'bits' in --fail-on" in capsys.readouterr().err
    board = tmp_path / "board"
    write([directed("a", 0.5)], board)
    assert main(["compare", str(board / "toy.csv"), worse, "--fail-on", "error:+0.1"]) == 1  # the CSV carries the direction
