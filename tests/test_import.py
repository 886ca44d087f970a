"""``ddbench import``, the ``file`` distiller, DD-Ranking's columns and result bundles (docs/import.md).

Files are written here in each official layout (as the repositories' code writes them, at digits'
8x8 size): every preset imports them, the artifact round-trips through its safetensors file, and
scores as the equivalent native artifact does; bad inputs are one line, exit 2, nothing written."""
from __future__ import annotations

import csv
import datetime
import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddbench.budget.artifact import content_hash, load, save
from ddbench.budget.labels import BANK_LOGITS, BANK_VIEWS, regime
from ddbench.budget.safeload import safe_load
from ddbench.cli import main
from ddbench.contracts.interfaces import Artifact
from ddbench.errors import SourceError
from ddbench.ops.subsets import random_artifact
from ddbench.plugins import get_plugin_manager, instantiate
from ddbench.results.board import dd_ranking
from ddbench.results.leaderboard import pages, write
from ddbench.results.records import aggregate
from ddbench.results.store import ResultStore
from ddbench.run.bundle import bundle, verify
from ddbench.run.harness import Distilled, Harness
from ddbench.run.worker import DistillReply
from ddbench.vocab import Budget

MEAN, STD = 0.3053, 0.376  # digits' statistics (plugins/ddbench_tasks/images.py)
STATS = ["--mean", str(MEAN), "--std", str(STD)]
IPC = 2


@pytest.fixture(scope="module")
def native() -> Artifact:
    """The native artifact the files are written from: 2 real digits per class, normalised, class-major."""
    task = instantiate(get_plugin_manager().tasks.get("digits"), {}, "quick")
    train = task.load().train
    index = torch.cat([torch.nonzero(train.y == c).flatten()[:IPC] for c in range(10)])
    return Artifact({"x": train.x[index].clone(), "y": train.y[index].clone()}, {"augment": "dsa"})


def pixels(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def imported(source: Path, preset: str, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> Artifact:
    code, _, err = run(["import", str(source), "--from", preset, "--task", "digits", "--out", str(out), *extra], capsys)
    assert code == 0, err
    return load(out)


def write_jpegs(root: Path, x: torch.Tensor, y: torch.Tensor, folder: str, name: str, suffix: str = "jpg") -> None:
    """Images as SRe2L's and RDED's ``save_images`` write them: pixels x 255 cast to uint8 (truncated), one file each."""
    counts: dict[int, int] = {}
    for image, c in zip(pixels(x).clamp(0, 1), y.tolist()):
        i = counts.get(c, 0)
        counts[c] = i + 1
        (root / folder.format(c)).mkdir(parents=True, exist_ok=True)
        array = (image[0].numpy() * 255).astype(np.uint8)
        Image.fromarray(array).save(root / folder.format(c) / f"{name.format(c, i)}.{suffix}", quality=100)


# -- each preset --------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["mtt", "tesla", "pt"])
def test_a_pt_pair_imports_and_round_trips_to_the_native_artifact(preset, native, tmp_path, capsys):
    torch.save(native.x.clone(), tmp_path / "images_best.pt")
    torch.save(native.y.clone(), tmp_path / "labels_best.pt")
    space = [] if preset != "pt" else ["--space", "normalised"]
    art = imported(tmp_path / "images_best.pt", preset, tmp_path / "a.safetensors", capsys, *STATS, *space, "--recipe", "augment=dsa")
    assert content_hash(art) == content_hash(native) and art.recipe == native.recipe  # same tensors, same declared recipe
    manifest = json.loads((tmp_path / "a.json").read_text())["info"]["import"]
    assert manifest["test_selected"] is (preset != "pt") and manifest["files"].keys() == {"images_best.pt", "labels_best.pt"}
    assert manifest["space"]["mean"] == [MEAN] and manifest["converted"] is None


def test_tesla_probabilities_and_datm_logits_become_soft_labels(native, tmp_path, capsys):
    logits = torch.randn(len(native.x), 10, generator=torch.Generator().manual_seed(0))
    torch.save(native.x.clone(), tmp_path / "images_best.pt")
    torch.save(logits.softmax(1), tmp_path / "labels_best.pt")
    tesla = imported(tmp_path, "tesla", tmp_path / "t.safetensors", capsys, *STATS, "--labels", "probabilities")
    assert regime(tesla.tensors, tesla.recipe) == "soft" and torch.allclose(tesla.y, logits.softmax(1), atol=1e-6)
    torch.save(logits, tmp_path / "labels_best.pt")
    torch.save(torch.tensor(0.0123), tmp_path / "lr_best.pt")  # DATM's learned lr, a 0-d tensor
    datm = imported(tmp_path, "datm", tmp_path / "d.safetensors", capsys, "--space", "normalised", *STATS, "--temperature", "2")
    assert torch.allclose(datm.y, (logits / 2).softmax(1), atol=1e-6)  # its soft cross-entropy: softmax(target / T)
    assert datm.tensors["lr"].item() == pytest.approx(0.0123) and datm.recipe["lr_from_artifact"] == "lr"
    assert datm.meta["import"]["lr"]["from"] == "the preset's file beside the images"


@pytest.mark.parametrize("preset", ["dc", "dsa", "dm"])
def test_a_dc_res_file_with_numpy_accuracies_imports_the_chosen_experiment(preset, native, tmp_path, capsys):
    other = native.x.flip(0).clone()
    res = tmp_path / f"res_{preset.upper()}_digits_ConvNet_{IPC}ipc.pt"
    torch.save({"data": [[other, native.y.clone()], [native.x.clone(), native.y.clone()]],
                "accs_all_exps": {"ConvNet": [np.float64(0.61), np.float64(0.6)]}}, res)  # numpy floats, as DC's epoch() returns
    art = imported(res, preset, tmp_path / "a.safetensors", capsys, *STATS, "--experiment", "1", "--recipe", "augment=dsa")
    assert content_hash(art) == content_hash(native) and art.meta["import"]["experiment"] == 1
    assert art.meta["import"]["test_selected"] is False


def test_dc_statistics_are_converted_exactly_to_the_tasks(native, tmp_path, capsys):
    """A set normalised with other statistics (DC's CIFAR-100 ones differ from MTT's) is moved to the
    task's by the exact per-channel affine map."""
    mean, std = 0.5, 0.25
    torch.save({"data": [[(pixels(native.x) - mean) / std, native.y.clone()]], "accs_all_exps": {}}, tmp_path / "res.pt")
    art = imported(tmp_path / "res.pt", "dm", tmp_path / "a.safetensors", capsys, "--mean", str(mean), "--std", str(std))
    assert torch.allclose(art.x, native.x, atol=1e-5)
    assert art.meta["import"]["converted"]["scale"] == [pytest.approx(std / STD)]


@pytest.mark.parametrize(("preset", "folder", "name"), [("sre2l", "new{:03d}", "class{:03d}_id{:03d}"), ("cda", "new{:03d}", "class{:03d}_id{:03d}"),
                                                         ("rded", "{:05d}", "class{:05d}_id{:05d}")])
def test_a_jpeg_folder_imports_as_pixels_within_eight_bit_rounding(preset, folder, name, native, tmp_path, capsys):
    write_jpegs(tmp_path / "syn", native.x, native.y, folder, name)
    art = imported(tmp_path / "syn", preset, tmp_path / "a.safetensors", capsys, "--labels", "hard")
    assert torch.equal(art.y, native.y)
    error = (pixels(art.x) - pixels(native.x).clamp(0, 1)).abs().max().item()
    assert error <= 3 / 255  # truncation to 8 bits (< 1/255) and JPEG at quality 100
    manifest = art.meta["import"]
    assert manifest["space"]["eight_bit"] and manifest["mosaic"] == (2 if preset == "rded" else 1) and len(manifest["files"]) == 20


def test_a_png_folder_round_trips_exactly_to_its_eight_bit_pixels(native, tmp_path, capsys):
    write_jpegs(tmp_path / "syn", native.x, native.y, "class{}", "img{}_{}", "png")
    art = imported(tmp_path / "syn", "folder", tmp_path / "a.safetensors", capsys, "--labels", "hard")
    eight_bit = torch.floor(pixels(native.x).clamp(0, 1) * 255) / 255
    assert torch.allclose(pixels(art.x), eight_bit, atol=1e-5)


def test_an_online_teacher_is_stored_and_charged(native, tmp_path, capsys):
    from safetensors.torch import save_file

    manager = get_plugin_manager()
    task = instantiate(manager.tasks.get("digits"), {}, "quick")
    from ddbench.budget.imports import empty_view

    view = empty_view("digits", 10, task.input_shape, task.info(), {})
    teacher = instantiate(manager.learners.get("convnet"), {"width": 4}, "full").build(view, 0)
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, tmp_path / "teacher.safetensors")
    write_jpegs(tmp_path / "syn", native.x, native.y, "new{:03d}", "class{:03d}_id{:03d}")
    code, _, err = run(["import", str(tmp_path / "syn"), "--from", "sre2l", "--task", "digits", "--out", str(tmp_path / "a.safetensors")], capsys)
    assert code == 2 and "--teacher" in err  # an online teacher must be named
    art = imported(tmp_path / "syn", "sre2l", tmp_path / "a.safetensors", capsys, "--teacher", "convnet:width=4",
                   "--teacher-weights", str(tmp_path / "teacher.safetensors"))
    assert regime(art.tensors, art.recipe) == "teacher" and art.recipe["teacher"] == "convnet:width=4"
    assert sum(t.numel() for k, t in art.tensors.items() if k.startswith("teacher.")) == sum(p.numel() for p in teacher.state_dict().values())


def test_parquet_shards_import(native, tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    rows = []
    for image, c in zip(pixels(native.x).clamp(0, 1), native.y.tolist()):
        buf = io.BytesIO()
        Image.fromarray((image[0].numpy() * 255).astype(np.uint8)).save(buf, format="PNG")
        rows.append({"image": {"bytes": buf.getvalue(), "path": None}, "label": c})
    (tmp_path / "shards").mkdir()
    pd.DataFrame(rows[:10]).to_parquet(tmp_path / "shards" / "train-00000.parquet")
    pd.DataFrame(rows[10:]).to_parquet(tmp_path / "shards" / "train-00001.parquet")
    art = imported(tmp_path / "shards", "parquet", tmp_path / "a.safetensors", capsys)
    assert torch.equal(art.y, native.y) and (pixels(art.x) - pixels(native.x).clamp(0, 1)).abs().max() < 1 / 255 + 1e-5


@pytest.mark.parametrize("layout", ["npz", "safetensors"])
def test_generic_array_files_import(layout, native, tmp_path, capsys):
    from safetensors.torch import save_file

    path = tmp_path / f"set.{layout}"
    if layout == "npz":
        np.savez(path, x=native.x.numpy(), y=native.y.numpy())
    else:
        save_file({"images": native.x.contiguous(), "labels": native.y.contiguous()}, str(path))
    art = imported(path, layout, tmp_path / "a.safetensors", capsys, "--space", "normalised", *STATS, "--recipe", "augment=dsa")
    assert content_hash(art) == content_hash(native)


def test_fkd_soft_labels_become_a_bank_by_replaying_the_sampler(native, tmp_path, capsys):
    write_jpegs(tmp_path / "syn", native.x, native.y, "new{:03d}", "class{:03d}_id{:03d}")
    n, g = len(native.x), torch.Generator().manual_seed(7)
    sampler = torch.utils.data.RandomSampler(range(n), generator=torch.Generator().manual_seed(42))
    truth = torch.randn(n, 2, 10, generator=g)
    for epoch in range(2):
        order = list(iter(sampler))
        (tmp_path / "fkd" / f"epoch_{epoch}").mkdir(parents=True)
        for b in range(2):  # batches of 10
            rows = order[b * 10:(b + 1) * 10]
            coords = torch.tensor([[0.1, 0.2, 0.5, 0.5]] * 10)
            torch.save([coords, torch.zeros(10, dtype=torch.bool), None, None, None, truth[rows, epoch].half()],
                       tmp_path / "fkd" / f"epoch_{epoch}" / f"batch_{b}.tar")
    art = imported(tmp_path / "syn", "sre2l", tmp_path / "a.safetensors", capsys, "--soft-labels", str(tmp_path / "fkd"))
    assert regime(art.tensors, art.recipe) == "soft-bank"
    assert torch.allclose(art.tensors[BANK_LOGITS], truth.half().float()) and art.tensors[BANK_VIEWS].shape == (n, 2, 5)
    mixed = tmp_path / "fkd" / "epoch_1" / "batch_1.tar"
    torch.save([torch.zeros(10, 4), torch.zeros(10), torch.arange(10), np.float64(0.3), [np.int64(1), np.int64(2), np.int64(3),
                np.int64(4)], torch.zeros(10, 10).half()], mixed)
    code, _, err = run(["import", str(tmp_path / "syn"), "--from", "sre2l", "--task", "digits", "--out", str(tmp_path / "b.safetensors"),
                        "--soft-labels", str(tmp_path / "fkd")], capsys)
    assert code == 2 and "cutmix or mixup" in err and not (tmp_path / "b.safetensors").exists()


# -- scoring ------------------------------------------------------------------------------------
def score(artifact: Artifact, distiller: str = "file") -> list[float]:
    """The evaluation of ``artifact`` as a digits cell (2 epochs, 2 nets), through the harness's own admission and scoring."""
    from ddbench.results.records import Cell

    harness = Harness(get_plugin_manager(), "cpu")
    cell = Cell("digits", {"epochs": 2}, distiller, {"path": "unused"}, Budget.parse(f"ipc={IPC}"), 0, [0, 1], "convnet", {}, "quick")
    reply = DistillReply("ok", tensors=artifact.tensors, recipe=artifact.recipe, meta=artifact.meta)
    result = harness.run_cell(cell, distilled={cell.distillation(): Distilled(reply)})
    assert result.status == "ok", result.error
    return result.values


def test_an_imported_artifact_scores_as_the_native_one(native, tmp_path, capsys):
    torch.save(native.x.clone(), tmp_path / "images_best.pt")
    torch.save(native.y.clone(), tmp_path / "labels_best.pt")
    art = imported(tmp_path, "mtt", tmp_path / "a.safetensors", capsys, *STATS, "--recipe", "augment=dsa")
    assert score(art) == score(native)


def test_the_file_distiller_reads_the_artifact_and_asks_for_test_selection(native, tmp_path):
    from ddbench.contracts.interfaces import RunContext
    from ddbench_baselines.imported import File

    manager = get_plugin_manager()
    assert not manager.distillers.get("file").in_every_suite  # a suite naming no distillers does not run it
    path = save(Artifact(native.tensors, native.recipe, {"import": {"task": "digits", "test_selected": True, "test_selected_from": "x"}}),
                tmp_path / "a")
    view = Harness(manager, "cpu").task("digits", {}, "quick")[1]
    context = RunContext(torch.device("cpu"), 0, torch.Generator())
    with pytest.raises(Exception, match="test_selected=true"):
        File(str(path)).distill(view, Budget.parse("ipc=2"), None, context)  # type: ignore[arg-type]
    out = File(str(path), test_selected=True).distill(view, Budget.parse("ipc=2"), None, context)  # type: ignore[arg-type]
    assert content_hash(out) == content_hash(native)
    with pytest.raises(ValueError, match="path="):
        File()


# -- bad inputs: one line, exit 2, nothing written ---------------------------------------------
def bad(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    out = tmp_path / "never.safetensors"
    code, stdout, err = run(["import", *argv, "--task", "digits", "--out", str(out)], capsys)
    assert code == 2 and stdout == "" and err.startswith("ddbench: error: ") and err.count("\n") == 1, err
    assert not out.exists() and not out.with_suffix(".json").exists()
    return err


def test_a_pickle_with_any_other_global_is_refused_unread(native, tmp_path, capsys):
    torch.save({"x": native.x, "when": datetime.date(2024, 1, 1)}, tmp_path / "images_best.pt")
    assert "datetime.date" in bad([str(tmp_path / "images_best.pt"), "--from", "mtt", *STATS], tmp_path, capsys)
    torch.save({"data": [[native.x, native.y]], "accs_all_exps": {"ConvNet": [datetime.date(2024, 1, 1)]}}, tmp_path / "res.pt")
    assert "datetime.date" in bad([str(tmp_path / "res.pt"), "--from", "dc", *STATS], tmp_path, capsys)
    torch.save(np.float64(0.5), tmp_path / "labels_best.pt")  # numpy numbers only where the layout holds them
    torch.save(native.x.clone(), tmp_path / "images_best.pt")
    assert "numpy" in bad([str(tmp_path / "images_best.pt"), "--from", "mtt", *STATS], tmp_path, capsys)
    with pytest.raises(SourceError, match="nothing was unpickled"):
        safe_load(tmp_path / "labels_best.pt")


def test_a_res_file_without_data_is_refused(native, tmp_path, capsys):
    torch.save({"accs_all_exps": {"ConvNet": [np.float64(0.5)]}}, tmp_path / "res.pt")
    assert "no 'data' list" in bad([str(tmp_path / "res.pt"), "--from", "dc", *STATS], tmp_path, capsys)


def test_a_folder_whose_classes_do_not_match_the_task_is_refused(native, tmp_path, capsys):
    keep = native.y < 3
    write_jpegs(tmp_path / "syn", native.x[keep], native.y[keep], "new{:03d}", "class{:03d}_id{:03d}")
    assert "3 classes, 0..2" in bad([str(tmp_path / "syn"), "--from", "sre2l", "--labels", "hard"], tmp_path, capsys)


def test_labels_of_the_wrong_kind_are_refused(native, tmp_path, capsys):
    torch.save(native.x.clone(), tmp_path / "images_best.pt")
    torch.save(torch.randn(len(native.x), 10), tmp_path / "labels_best.pt")
    assert "--labels probabilities or logits" in bad([str(tmp_path / "images_best.pt"), "--from", "mtt", *STATS], tmp_path, capsys)
    assert "declare --labels logits" in bad([str(tmp_path / "images_best.pt"), "--from", "tesla", *STATS, "--labels", "probabilities"],
                                            tmp_path, capsys)
    torch.save(native.y.clone(), tmp_path / "labels_best.pt")
    assert "declare --labels hard" in bad([str(tmp_path / "images_best.pt"), "--from", "datm", "--space", "normalised", *STATS],
                                          tmp_path, capsys)


def test_a_space_the_pixels_contradict_is_refused_unless_forced(native, tmp_path, capsys):
    torch.save(pixels(native.x).clamp(0, 1), tmp_path / "images_best.pt")  # pixels, declared normalised
    torch.save(native.y.clone(), tmp_path / "labels_best.pt")
    argv = [str(tmp_path / "images_best.pt"), "--from", "mtt", *STATS]
    assert "look like pixels" in bad(argv, tmp_path, capsys)
    torch.save(native.x.clone(), tmp_path / "images_best.pt")  # normalised, declared pixels
    assert "look normalised" in bad([*argv, "--space", "pixels"], tmp_path, capsys)
    art = imported(tmp_path / "images_best.pt", "mtt", tmp_path / "f.safetensors", capsys, *STATS, "--space", "pixels", "--force")
    assert art.meta["import"]["space"]["forced"]


def test_zca_is_never_converted(native, tmp_path, capsys):
    torch.save(native.x.clone(), tmp_path / "images_best.pt")
    torch.save(native.y.clone(), tmp_path / "labels_best.pt")
    torch.save(torch.logit(torch.full((len(native.x), 10), 0.1)), tmp_path / "labels_best.pt")
    assert "cannot be converted exactly" in bad([str(tmp_path / "images_best.pt"), "--from", "datm"], tmp_path, capsys)


# -- DD-Ranking's columns -----------------------------------------------------------------------
def record(distiller: str, budget: str | None, values: list[float], random_ref: float | None = None, regime: str = "hard",
           extra: dict | None = None) -> dict:
    config = {"task": "digits", "task_options": {}, "distiller": distiller, "distiller_options": {"epochs": 40} if budget is None else {},
              "budget": budget, "seed": 0, "eval_seeds": [0, 1], "learner": "convnet", "learner_options": {}, "profile": "quick",
              "time_limit_s": None, "device_type": "cpu", "results_version": 1, "protocol": "native"}
    return {"config": config, "status": "ok", "metric": "accuracy", "values": values, "random_ref": random_ref, "extra": extra or {},
            "stored_params": 650, "compression": 2.0, "regime": regime, "higher_is_better": {"accuracy": True}, "key": distiller,
            "provenance": {}, "finished_at": "2026-01-01T00:00:00", "device": "cpu"}


def test_dd_ranking_scores_are_computed_on_fractions():
    records = [record("full", None, [98.0, 98.0]), record("dm", "ipc=10", [90.0, 90.0], random_ref=80.0),
               record("sre2l", "ipc=10", [70.0, 70.0], random_ref=60.0, regime="teacher", extra={"teacher_free": 50.0})]
    rows = {r.distiller: r for r in aggregate(records)}
    dd_ranking(list(rows.values()))
    hlr, ior = 0.98 - 0.90, 0.90 - 0.80
    alpha = 0.5 * ior - 0.5 * hlr
    assert rows["dm"].extra["hlr"] == pytest.approx(hlr) and rows["dm"].extra["ior"] == pytest.approx(ior)
    assert rows["dm"].extra["lrs"] == pytest.approx((math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1)))
    assert rows["sre2l"].extra["hlr"] == pytest.approx(0.98 - 0.50)  # the teacher-free accuracy: the inputs with hard labels
    assert all(0 <= r.extra["lrs"] <= 1 for r in rows.values() if "lrs" in r.extra) and "hlr" not in rows["full"].extra
    dd_ranking(list(rows.values()), weight=1.0)
    assert rows["dm"].extra["lrs"] == pytest.approx((math.exp(ior) - math.exp(-1)) / (math.e - math.exp(-1)))
    md = pages(aggregate(records), records, "regen")["digits.md"]
    assert "| hlr" in md and "DD-Ranking's scores" in md and "w = 0.5" in md


def test_the_csv_carries_the_dd_ranking_scores(tmp_path):
    records = [record("full", None, [98.0, 98.0]), record("dm", "ipc=10", [90.0, 90.0], random_ref=80.0)]
    write(records, tmp_path)
    rows = {r["distiller"]: r for r in csv.DictReader((tmp_path / "digits.csv").open())}
    assert float(rows["dm"]["hlr"]) == pytest.approx(0.08) and float(rows["dm"]["ior"]) == pytest.approx(0.10)
    assert 0 <= float(rows["dm"]["lrs"]) <= 1 and rows["full"]["hlr"] == ""  # a reference row has none


def test_a_board_without_a_full_row_has_no_dd_ranking_columns():
    records = [record("dm", "ipc=10", [90.0, 90.0], random_ref=80.0)]
    rows = aggregate(records)
    dd_ranking(rows)
    assert not {"hlr", "ior", "lrs"} & set(rows[0].extra) and "DD-Ranking" not in pages(rows, records, "regen")["digits.md"]


# -- bundles ------------------------------------------------------------------------------------
def claimed(tmp_path: Path) -> Path:
    """A store holding a cell's result (digits, a random subset of 10 per class, 10 MLPs) and the artifact it
    saved, as `ddbench run --save-artifacts` leaves them."""
    from ddbench.results.records import Cell

    manager = get_plugin_manager()
    harness = Harness(manager, "cpu", artifact_dir=tmp_path / "arts")
    view = harness.task("digits", {"epochs": 100}, "quick")[1]
    subset = random_artifact(view, Budget.parse("ipc=10"), 0)  # the random reference's own subset: its scores are reused
    cell = Cell("digits", {"epochs": 100}, "random", {}, Budget.parse("ipc=10"), 0, list(range(10)), "mlp", {"width": 64}, "quick")
    reply = DistillReply("ok", tensors={"x": subset.x.cpu(), "y": subset.y.cpu()}, recipe={})
    result = harness.run_cell(cell, distilled={cell.distillation(): Distilled(reply)})
    with ResultStore(tmp_path / "s.sqlite", manager) as store:
        store.put(result)
    return next((tmp_path / "arts").glob("*.safetensors"))


def test_a_bundle_verifies_and_a_raised_claim_does_not_stand(tmp_path):
    artifact = claimed(tmp_path)
    with ResultStore(tmp_path / "s.sqlite", create=False) as store:
        records = store.records()
    path = bundle(artifact, records, tmp_path / "b.zip")
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["artifact.json", "artifact.safetensors", "bundle.json", "claims.json"]
        members = {n: z.read(n) for n in z.namelist()}
    text, stands = verify(path, get_plugin_manager(), "cpu")
    assert stands and "the claim stands" in text, text
    claim = json.loads(members["claims.json"])
    claim[0]["values"] = [v + 5 for v in claim[0]["values"]]
    with zipfile.ZipFile(tmp_path / "raised.zip", "w") as z:
        for name, data in members.items():
            z.writestr(name, json.dumps(claim) if name == "claims.json" else data)
    text, stands = verify(tmp_path / "raised.zip", get_plugin_manager(), "cpu")
    assert not stands and "the claim does not stand" in text and "REGRESSION" in text, text


def test_a_file_that_is_not_a_bundle_is_one_line(tmp_path, capsys):
    with zipfile.ZipFile(tmp_path / "x.zip", "w") as z:
        z.writestr("evil.pkl", b"\x80\x04.")
    code, _, err = run(["verify", str(tmp_path / "x.zip")], capsys)
    assert code == 2 and "not a ddbench bundle" in err and err.count("\n") == 1


def test_an_artifact_no_run_saved_cannot_be_bundled(native, tmp_path, capsys):
    path = save(native, tmp_path / "a")
    (tmp_path / "s.sqlite").touch()
    ResultStore(tmp_path / "s.sqlite").close()
    code, _, err = run(["bundle", str(path), "--store", str(tmp_path / "s.sqlite")], capsys)
    assert code == 2 and "records no cell" in err

