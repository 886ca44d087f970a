"""Checkpoints (ddbench.contracts.checkpoint): what a checkpoint restores, that it is written atomically
and read without pickle, that a damaged or foreign one is ignored with one line, that the harness
keeps it while a killed cell waits to resume and deletes it once the cell is final; the conformance
kit's ``resumes`` rule on the distillers that checkpoint; and, in the slow lane, ``ddbench run``
SIGKILLed three times in the middle of a dc distillation ending with the uninterrupted artifact."""
from __future__ import annotations

import json
import os
import pickle
import random
import re
import signal
import sqlite3
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import resume_plugins
from ddbench import Budget
from ddbench.cli import main
from ddbench.contracts.checkpoint import FORMAT, CheckpointStore
from ddbench.contracts.interfaces import RunContext
from ddbench.errors import DDBenchWarning, SuiteError
from ddbench.plugins import PluginManager
from ddbench.run.harness import Harness, checkpoint_key
from ddbench.run.suite import DistillerEntry, Suite, TaskEntry, parse_suite
from ddbench.testing import conformance, tiny_classification

TESTS = Path(__file__).resolve().parent
CPU = torch.device("cpu")


def context(path: Path | None, key: str = "k") -> RunContext:
    store = None if path is None else CheckpointStore(path, key, every_s=0.0)
    return RunContext(CPU, 0, torch.Generator().manual_seed(0), checkpoints=store)


class State:
    """One object of every kind a checkpoint holds, moved away from its start by a few steps."""

    def __init__(self, seed: int, steps: int):
        torch.manual_seed(seed)
        self.x = torch.randn(4, 3, requires_grad=True)
        self.net = torch.nn.Linear(3, 2)
        self.sgd = torch.optim.SGD([self.x], lr=0.1, momentum=0.9)
        self.adam = torch.optim.Adam(self.net.parameters(), lr=0.01, betas=(0.5, 0.9))
        self.generator = torch.Generator().manual_seed(seed)
        self.numpy = np.random.default_rng(seed)
        self.python = random.Random(seed)
        for _ in range(steps):
            self.sgd.zero_grad()
            self.adam.zero_grad()
            (self.net(self.x) ** 2).sum().backward()
            self.sgd.step()
            self.adam.step()
            torch.randn(2, generator=self.generator)
            self.numpy.random()
            self.python.random()

    def objects(self) -> dict:
        return {"x": self.x, "net": self.net, "sgd": self.sgd, "adam": self.adam, "generator": self.generator,
                "numpy": self.numpy, "python": self.python}

    def draws(self) -> tuple:
        """What the state does next: its next steps' values and every generator's next draw."""
        self.sgd.zero_grad()
        self.adam.zero_grad()
        (self.net(self.x) ** 2).sum().backward()
        self.sgd.step()
        self.adam.step()
        return (self.x.detach().clone(), self.net.weight.detach().clone(), torch.randn(3, generator=self.generator),
                self.numpy.random(), self.python.random(), torch.rand(2), random.random(), np.random.random())


def test_a_checkpoint_restores_every_kind_of_state(tmp_path):
    path = tmp_path / "c.safetensors"
    values = {"history": [(1, 0.5), (2, float("nan"))], "by_step": {3: torch.arange(3)}, "array": np.arange(4, dtype=np.uint32),
              "__odd__": None, "flag": True, "text": "t", "grad": torch.ones(2, requires_grad=True)}
    saved = State(0, 3)
    ckpt = context(path).checkpointer(**saved.objects())
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    ckpt.save(3, **values)
    expected = saved.draws()

    fresh = State(1, 0)  # other values, empty optimiser states
    resumed = context(path)
    step, got = resumed.checkpointer(**fresh.objects()).restore()
    assert step == 3 and resumed.resumed_from == 3
    assert got["history"] == [(1, 0.5), (2, got["history"][1][1])] and np.isnan(got["history"][1][1])
    assert torch.equal(got["by_step"][3], torch.arange(3)) and got["array"].dtype == np.uint32
    assert got["__odd__"] is None and got["flag"] is True and got["text"] == "t" and got["grad"].requires_grad
    for a, b in zip(fresh.draws(), expected, strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_without_a_store_nothing_is_saved_or_restored(tmp_path):
    ckpt = context(None).checkpointer(x=torch.zeros(2))
    assert ckpt.restore() == (0, {}) and ckpt.step(1) is False
    ckpt.save(1)
    assert not any(tmp_path.iterdir())


def test_a_checkpoint_is_offered_every_n_steps_or_when_the_interval_has_passed(tmp_path):
    store = CheckpointStore(tmp_path / "c.safetensors", "k", every_s=3600.0)
    ckpt = RunContext(CPU, 0, torch.Generator(), checkpoints=store).checkpointer(every=4, x=torch.zeros(2))
    assert [ckpt.step(s) for s in range(1, 9)] == [False, False, False, True, False, False, False, True]
    store.every_s = 0.0
    assert ckpt.step(9)


def test_a_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    x = torch.zeros(3)
    ckpt = context(path).checkpointer(x=x)
    ckpt.save(1)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    x += 1
    with pytest.raises(OSError, match="disk full"):
        ckpt.save(2)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary left
    monkeypatch.undo()
    y = torch.full((3,), 5.0)
    assert context(path).checkpointer(x=y).restore().step == 1 and torch.equal(y, torch.zeros(3))
    (tmp_path / ".c.safetensors.999.tmp").write_bytes(b"half")  # what a write killed before its rename leaves
    CheckpointStore(path, "k").delete()
    assert not any(tmp_path.iterdir())


class Payload:
    """A pickle that creates a file when it is loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def damage(kind: str, path: Path, tmp_path: Path) -> None:
    """Turn the checkpoint at ``path`` into a ``kind`` of unusable one."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    if kind == "truncated":
        path.write_bytes(data[: len(data) - 5])
    elif kind == "garbage":
        path.write_bytes(os.urandom(300))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps(Payload(tmp_path / "pwned")))
    elif kind in ("key", "format"):
        header["__metadata__"]["key" if kind == "key" else "format"] = "other" if kind == "key" else "ddbench-checkpoint/0"
        text = json.dumps(header).encode()
        path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size :])


@pytest.mark.parametrize("kind, why", [("truncated", "cannot be read"), ("garbage", "truncated or not a safetensors file"),
                                       ("empty", "truncated or not a safetensors file"),
                                       ("pickle", "truncated or not a safetensors file"),
                                       ("key", "belongs to another distillation"), ("format", "its format is"),
                                       ("names", "holds no 'y'"), ("shape", "'x' as (3,) torch.float32, where")])
def test_a_damaged_or_foreign_checkpoint_is_ignored_with_one_line(tmp_path, kind, why):
    path = tmp_path / "c.safetensors"
    context(path).checkpointer(x=torch.ones(3), generator=torch.Generator().manual_seed(3)).save(5, history=[1, 2])
    if kind not in ("names", "shape"):
        damage(kind, path, tmp_path)
    x, generator = torch.zeros(4 if kind == "shape" else 3), torch.Generator().manual_seed(0)
    state = generator.get_state()
    objects = {"x": x, "generator": generator, **({"y": torch.zeros(1)} if kind == "names" else {})}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = context(path)
        assert resumed.checkpointer(**objects).restore() == (0, {})
    (warning,) = [w for w in caught if issubclass(w.category, DDBenchWarning)]
    text = str(warning.message)
    assert "\n" not in text and str(path) in text and why in text and text.endswith("starts from the beginning.")
    assert not x.any() and torch.equal(generator.get_state(), state) and resumed.resumed_from == 0  # nothing changed
    assert not (tmp_path / "pwned").exists()


def test_checkpoints_never_unpickle(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    state = State(0, 2)
    context(path).checkpointer(**state.objects()).save(2, history=[(1, 2.0)])

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert context(path).checkpointer(**State(1, 0).objects()).restore().step == 2
    metadata = json.loads(path.read_bytes()[8 : 8 + int.from_bytes(path.read_bytes()[:8], "little")])["__metadata__"]
    assert metadata["format"] == FORMAT and metadata["key"] == "k" and json.loads(metadata["state"])["step"] == 2


@pytest.fixture(scope="module")
def walk_harness(tmp_path_factory):
    manager = PluginManager()
    manager.load_entrypoints()
    manager.add(resume_plugins, "resume")
    return Harness(manager, "cpu", cache_dir=tmp_path_factory.mktemp("cache"), checkpoint_every_s=0.0,
                   artifact_dir=tmp_path_factory.mktemp("artifacts"))


def walk(harness: Harness, **options):
    suite = Suite("resume", [TaskEntry("digits", [Budget.parse("ipc=1")])], [DistillerEntry("walk", options)], "quick", 1, [0])
    (result,) = harness.run(suite)
    return result


def test_the_harness_keeps_a_killed_cells_checkpoint_resumes_from_it_and_deletes_it(walk_harness, tmp_path):
    marker = tmp_path / "died"
    options = {"steps": 6, "die_at": 4, "marker": str(marker)}
    cell = next(iter(walk_harness.cells(Suite("r", [TaskEntry("digits", [Budget.parse("ipc=1")])],
                                              [DistillerEntry("walk", options)], "quick", 1, [0]))))
    path = walk_harness.checkpoints(cell).path
    assert path.parent == walk_harness.cache_dir / "checkpoints" and path.stem == checkpoint_key(cell)

    killed = walk(walk_harness, **options)
    assert killed.status == "failed" and "SIGKILL" in killed.error and marker.exists()
    assert path.is_file()  # the worker died: the checkpoint of step 4 waits for the next run

    resumed = walk(walk_harness, **options)
    assert resumed.status == "ok" and resumed.resumed_from == 4 and resumed.threads == torch.get_num_threads()
    assert not path.exists()  # the cell is final

    straight = walk(walk_harness, steps=6, die_at=0, marker=str(marker))  # another cell (other options): no checkpoint to find
    assert straight.status == "ok" and straight.resumed_from == 0 and straight.values == resumed.values
    saved = {r.cell.key(): (walk_harness.artifact_dir / f"digits-walk-{r.cell.key()}.safetensors").read_bytes() for r in (resumed, straight)}
    assert len(set(saved.values())) == 1  # bitwise the same artifact


def test_the_checkpoint_key_leaves_out_the_time_limit_only(walk_harness):
    cells = [next(iter(walk_harness.cells(Suite("r", [TaskEntry("digits", [Budget.parse("ipc=1")])], [DistillerEntry("walk", o)],
                                                "quick", e, [0], t, protocols=p))))
             for o, e, t, p in [({}, 1, None, ["native"]), ({}, 3, 60.0, ["native"]), ({}, 1, None, ["common"]),
                                ({"steps": 7}, 1, None, ["native"])]]
    keys = [checkpoint_key(c) for c in cells]
    assert keys[0] == keys[1] == keys[2] != keys[3]


@pytest.mark.parametrize("name, rule", [("forgetful", "gave another artifact"), ("silent", "offered no checkpoint")])
def test_the_kit_catches_a_resumable_distiller_that_does_not_resume(name, rule):
    cls = getattr(resume_plugins, name.capitalize())
    report = conformance(cls, tasks=[tiny_classification(budgets=("ipc=1",))])
    assert [f.rule for f in report.failures] == ["resumes"] and rule in report.failures[0].detail


def test_a_resumable_distiller_passes_the_kit():
    assert conformance(resume_plugins.Walk, tasks=[tiny_classification(budgets=("ipc=1",))]).passed


@pytest.mark.parametrize("name, options", [("dc", {"iterations": 4}), ("dsa", {"iterations": 4}), ("dm", {"iterations": 4}),
                                           ("mtt", {"iterations": 3, "num_experts": 2, "expert_group": 2, "expert_batch": 16,
                                                    "syn_steps": 3, "batch_syn": 6, "max_start_epoch": 1, "expert_epochs": 1,
                                                    "eval_epochs": None})])
def test_the_distillers_that_checkpoint_resume_bit_for_bit(manager, tmp_path, name, options):
    cls = manager.distillers.get(name)
    assert cls.resumable
    report = conformance(cls, options, tasks=[tiny_classification(budgets=("ipc=2",))], cache_dir=tmp_path)
    assert report.passed, report.failures


@pytest.mark.parametrize("args, message", [(["--checkpoint-every", "-1"], "--checkpoint-every must be a number of seconds >= 0"),
                                           (["--checkpoint-every", "nan"], "--checkpoint-every must be"),
                                           (["--threads", "0"], "--threads must be a number of threads from 1 to 1024")])
def test_bad_thread_and_checkpoint_flags_are_one_line_errors(tmp_path, capsys, args, message):
    assert main(["run", "--task", "digits", "--budget", "ipc=1", "--distiller", "random", "--store", str(tmp_path / "s.sqlite"),
                 *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not (tmp_path / "s.sqlite").exists()


@pytest.mark.parametrize("value, error", [(2, None), (0, "threads must be a number of threads from 1 to 1024 (got 0)"),
                                          ("2", "threads must be a positive integer (got '2')"),
                                          (True, "threads must be a positive integer (got True)")])
def test_a_suite_sets_the_threads_of_its_cells(value, error):
    data = {"task": [{"name": "digits", "budgets": ["ipc=1"]}], "threads": value}
    if error is None:
        assert parse_suite(data, "s.toml").threads == 2
    else:
        with pytest.raises(SuiteError, match=re.escape(f"s.toml: {error}")):
            parse_suite(data, "s.toml")


# -- ddbench run, SIGKILLed (slow lane) --------------------------------------------------------


def checkpoint_step(folder: Path) -> int | None:
    """The step of the checkpoint in ``folder`` (None: none, or one being replaced)."""
    for path in folder.glob("*.safetensors"):
        try:
            data = path.read_bytes()
            header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
            return int(json.loads(header["__metadata__"]["state"])["step"])
        except (OSError, ValueError, KeyError):
            return None
    return None


@pytest.mark.slow  # about 20 s: three starts of `ddbench run` killed (mostly their start-up), a fourth in this process
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find worker processes")
def test_ddbench_run_sigkilled_three_times_mid_distillation_resumes_to_the_uninterrupted_artifact(tmp_path, monkeypatch,
                                                                                                   dc_reference):
    from conftest import DC_ARGS
    from test_interrupts import start, wait_until_gone

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / ".ddbench" / "cache" / "checkpoints"
    args = [*DC_ARGS, "--threads", "1", "--store", "run.sqlite", "--save-artifacts", "run", "--checkpoint-every", "0.05"]
    killed_at: list[int] = []
    for target in (4, 8, 12):
        marker = uuid.uuid4().hex
        proc = start(args, tmp_path, marker)
        seen: list[int] = []
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and (not seen or seen[-1] < target):
            step = checkpoint_step(folder)
            if step is not None and (not seen or step != seen[-1]):
                seen.append(step)
            time.sleep(0.01)
        assert proc.poll() is None, (seen, proc.communicate())
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not wait_until_gone(marker)
        assert all(step >= (killed_at[-1] if killed_at else 1) for step in seen), seen  # it resumed, never restarted
        killed_at.append(checkpoint_step(folder))
    assert main(["run", *args]) == 0  # the fourth start, in this process: it resumes from the third kill and finishes
    (resumed,) = Path("run").glob("*.safetensors")
    assert resumed.name == dc_reference["name"] and resumed.read_bytes() == dc_reference["bytes"]
    assert not list(folder.glob("*"))  # deleted once the cell was final
    with sqlite3.connect("run.sqlite") as db:
        (row,) = db.execute("SELECT result FROM cells").fetchall()
    record, reference = json.loads(row[0]), dc_reference["record"]
    assert record["resumed_from"] == killed_at[-1] >= 12 and reference["resumed_from"] == 0
    assert record["values"] == reference["values"] and record["threads"] == reference["threads"] == 1
