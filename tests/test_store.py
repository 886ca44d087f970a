"""The results store survives concurrent writers (SIGKILL: tests/test_interrupts.py); artifacts are safetensors, never pickle."""
from __future__ import annotations

import multiprocessing
import pickle

import pytest
import torch

import store_writer
from ddbench import Artifact
from ddbench.budget.artifact import load, save
from ddbench.errors import ArtifactError
from ddbench.results.records import Cell, CellResult, result_from_dict, result_to_dict
from ddbench.results.store import ResultStore
from store_writer import fake_result


def test_result_round_trip(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    result = fake_result(0)
    result.random_ref, result.extra = 80.0, {"mse": 0.5}
    store.put(result, "s")
    (record,) = store.records()
    again = result_from_dict(record)
    assert result_to_dict(again) == result_to_dict(result) and again.gain == pytest.approx(10.0)
    assert store.done(result.cell) and record["provenance"]["ddbench"]
    result.status = "failed"
    store.put(result)
    assert not store.done(result.cell) and len(store.records()) == 1  # failed cells rerun, replaced in place


def test_the_protocol_and_the_model_count_round_trip_and_keep_cells_apart(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    native = fake_result(0)
    native.model_params = 1234
    common = CellResult(Cell(**{**native.cell.__dict__, "protocol": "common"}), "ok", "accuracy", [91.0], model_params=1234)
    store.put(native)
    assert not store.done(common.cell)  # the other protocol is another cell
    store.put(common)
    records = store.records()
    assert sorted(r["config"]["protocol"] for r in records) == ["common", "native"]
    assert {result_from_dict(r).cell.protocol for r in records} == {"native", "common"}
    assert all(r["model_params"] == 1234 and result_to_dict(result_from_dict(r))["model_params"] == 1234 for r in records)


def test_concurrent_writers_do_not_corrupt(tmp_path):
    path = str(tmp_path / "r.sqlite")
    ResultStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=store_writer.write, args=(path, k * 1000, 60)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    store = ResultStore(path)
    assert len(store.records()) == 120
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_artifacts_are_safetensors_with_a_hashed_sidecar(tmp_path):
    art = Artifact({"x": torch.randn(4, 1, 8, 8), "y": torch.arange(4), "lr": torch.tensor(0.01)}, {"augment": "dsa"}, {"loss": [1.0]})
    path = save(art, tmp_path / "a", {"task": "digits"})
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    again = load(path)
    assert all(torch.equal(art.tensors[k], again.tensors[k]) for k in art.tensors) and again.recipe == {"augment": "dsa"}
    torch.save({"x": torch.zeros(1)}, tmp_path / "evil.pt")
    with pytest.raises(ArtifactError, match="refusing to load 'evil.pt': pickle"):
        load(tmp_path / "evil.pt")
    (tmp_path / "disguised.safetensors").write_bytes((tmp_path / "evil.pt").read_bytes())
    with pytest.raises(ArtifactError, match="not a safetensors file"):
        load(tmp_path / "disguised.safetensors")
    save(Artifact({"x": torch.zeros(4, 1, 8, 8)}), tmp_path / "b")
    (tmp_path / "a.json").replace(tmp_path / "b.json")
    with pytest.raises(ArtifactError, match="does not match the hash"):
        load(tmp_path / "b.safetensors")


def test_provenance_commit_can_be_named_by_the_environment(monkeypatch):
    from ddbench.results.provenance import git_commit, provenance

    git_commit.cache_clear()
    monkeypatch.setenv("DDBENCH_COMMIT", "abc123def456")
    try:
        assert provenance()["commit"] == "abc123def456"
    finally:
        git_commit.cache_clear()


def saved(tmp_path, name="a"):
    """An artifact saved with its sidecar, and the sidecar's content."""
    import json

    path = save(Artifact({"x": torch.randn(2, 1, 8, 8), "y": torch.arange(2)}, {"augment": "dsa"}), tmp_path / name,
                {"task": "digits"})
    return path, json.loads(path.with_suffix(".json").read_text())


def spoil(path, content, sidecar) -> None:
    """Spoil the sidecar of the artifact at ``path``: remove it (``None``), update its JSON (a dict)
    or write ``sidecar``'s bytes over it."""
    import json

    side = path.with_suffix(".json")
    if sidecar is None:
        side.unlink()
    elif isinstance(sidecar, dict):
        side.write_text(json.dumps({**content, **sidecar}))
    else:
        side.write_bytes(sidecar)


@pytest.mark.parametrize("sidecar, expected", [
    (pickle.dumps({"recipe": {}, "meta": {}}), "is not UTF-8 text (a pickle or a binary file?)"),
    (bytes(range(256)), "is not UTF-8 text (a pickle or a binary file?)"),
    (b"{not json", "is not valid JSON (Expecting property name"),
    (b"[1, 2]", "holds a JSON list, not an object with recipe, meta, info and sha256"),
    ({"recipe": "dsa"}, "'recipe' is a str, not a JSON object"),
    ({"meta": [1]}, "'meta' is a list, not a JSON object"),
    ({"sha256": None}, "has no content hash ('sha256'), so the tensors cannot be checked"),
    ({"sha256": "1234"}, "has no content hash ('sha256'), so the tensors cannot be checked"),
    (None, "has no sidecar 'a.json' (its recipe and content hash), so nothing in it can be checked"),
], ids=["pickle", "binary", "invalid-json", "a-list", "recipe-a-string", "meta-a-list", "hash-null", "hash-short", "no-sidecar"])
def test_a_bad_sidecar_is_refused_in_one_line(tmp_path, sidecar, expected):
    import json

    path, content = saved(tmp_path)
    spoil(path, content, sidecar)
    with pytest.raises(ArtifactError) as caught:
        load(path)
    assert expected in str(caught.value) and len(str(caught.value).splitlines()) == 1
    without_hash = {k: v for k, v in content.items() if k != "sha256"}
    path.with_suffix(".json").write_text(json.dumps(without_hash))
    with pytest.raises(ArtifactError, match="has no content hash"):
        load(path)


def test_a_tensor_with_a_path_for_a_name_is_refused(tmp_path):
    import json

    from safetensors.torch import save_file

    from ddbench.budget.artifact import content_hash

    tensors = {"x": torch.zeros(2, 1, 8, 8), "../../etc/passwd": torch.zeros(3)}
    save_file(tensors, str(tmp_path / "evil.safetensors"))
    (tmp_path / "evil.json").write_text(json.dumps({"recipe": {}, "meta": {}, "info": {}, "sha256": content_hash(Artifact(tensors))}))
    with pytest.raises(ArtifactError, match=r"holds tensor '../../etc/passwd' \(float32\), not a plain name"):
        load(tmp_path / "evil.safetensors")


@pytest.mark.parametrize("sidecar, expected", [
    (pickle.dumps({"recipe": {}}), "is not UTF-8 text"),
    (b"[]", "holds a JSON list"),
    (None, "has no sidecar"),
    ({"info": {"cell": "digits", "recipe": {}}}, "has no cell record in its sidecar"),
], ids=["pickle", "a-list", "no-sidecar", "cell-a-string"])
def test_ddbench_analyze_on_a_folder_with_a_bad_sidecar_is_one_line_exit_2(capsys, tmp_path, sidecar, expected):
    from ddbench.cli import main

    folder = tmp_path / "artifacts"
    path, content = saved(folder)
    spoil(path, content, sidecar)
    assert main(["analyze", str(folder), "--analysis", "mixing", "--store", str(tmp_path / "s.sqlite"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ddbench: error:")]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err
