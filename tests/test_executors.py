"""Executors (docs/executors.md): the plugin kind, the ``ddbench run`` flags, the provenance and
board note of cells that shared a device, and the ray executor on a local Ray instance with 2 CPUs
(slow lane; CI installs the ``ray`` extra): the local executor's results, a killed worker retried,
a failing cell left failed, a SIGKILLed driver losing no finished cell."""
from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from ddbench import Budget, hookimpl
from ddbench.cli import main
from ddbench.contracts.executor import Executor
from ddbench.errors import PluginError, SuiteError
from ddbench.plugins import PluginManager
from ddbench.results.records import Cell, CellResult
from ddbench.results.store import ResultStore, read_results
from ddbench.run.local import LocalExecutor, components, distillations, largest_first, rebuilt
from ddbench.run.suite import DistillerEntry, Suite, TaskEntry
from ddbench_executors.ray_executor import RayExecutor

TESTS = Path(__file__).resolve().parent
RUN = ["--task", "digits", "--budget", "ipc=1", "--distiller", "random", "--device", "cpu"]


def cell(distiller: str = "random", protocol: str = "native", seed: int = 0) -> Cell:
    return Cell("digits", {}, distiller, {}, Budget.parse("ipc=1"), seed, [0], "convnet", {}, "quick", protocol=protocol)


class Recorder(Executor):
    """Yields a failed result per cell without running it, remembering what it was handed."""

    name = "recorder"
    handed: ClassVar[list[Cell]] = []

    def run(self, harness, cells):
        Recorder.handed = list(cells)
        for c in cells:
            yield CellResult(c, "failed", error="not run")


# -- the plugin kind -------------------------------------------------------------------------
def test_the_builtin_executors_come_from_the_executors_plugin(manager):
    assert manager.executors.get("local") is LocalExecutor and manager.executors.get("ray") is RayExecutor
    assert manager.plugins["executors"].registered["executor"] == ["local", "ray"]


@pytest.mark.slow
def test_importing_ddbench_and_its_plugins_does_not_import_ray():
    code = ("import sys; from ddbench.plugins import get_plugin_manager; from ddbench.cli import build_parser; "
            "m = get_plugin_manager(); build_parser(m); assert 'ray' in m.executors; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_register_executors_hook_validates_executors():
    manager = PluginManager()
    manager.add(types.SimpleNamespace(ddbench_register_executors=hookimpl(lambda register: register(Recorder))), "rec")
    assert manager.executors.get("recorder") is Recorder and manager.plugins["rec"].registered["executor"] == ["recorder"]
    with pytest.raises(PluginError, match="registered executor 'random' \\(Random\\), which is not a subclass of "
                                          "ddbench.contracts.executor.Executor: subclass it"):
        from ddbench_baselines.coresets import Random

        manager.add(types.SimpleNamespace(ddbench_register_executors=hookimpl(lambda register: register(Random))), "wrong")
    assert "wrong" not in manager.plugins


def test_the_harness_hands_the_executor_the_cells_not_skipped(harness):
    suite = Suite("s", [TaskEntry("digits", [Budget.parse("ipc=1"), Budget.parse("ipc=2")])],
                  [DistillerEntry("random"), DistillerEntry("herding")], eval_seeds=1, profile="quick")
    skipped = {c.key() for c in harness.cells(suite) if c.distiller == "herding"}
    seen = []
    results = harness.run(suite, on_result=seen.append, skip=lambda c: c.key() in skipped, executor=Recorder())
    assert [c.key() for c in Recorder.handed] == [c.key() for c in harness.cells(suite) if c.key() not in skipped]
    assert len(Recorder.handed) == 2 and seen == results and all(r.error == "not run" for r in results)


def test_the_documented_executor_example_runs_the_cells_it_is_handed(monkeypatch):
    from test_hooks_doc import python_blocks, sections

    module = types.ModuleType("hooks_md_executors")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(python_blocks(sections()["ddbench_register_executors"])[-1], "docs/hooks.md", "exec"), module.__dict__)
    manager = PluginManager()
    manager.add(module, "doc-example")
    executor = manager.executors.get(manager.plugins["doc-example"].registered["executor"][0])()
    ran = []
    harness = types.SimpleNamespace(run_cell=lambda c, *rest: ran.append(c) or CellResult(c, "ok"))
    cells = [cell(seed=0), cell(seed=1)]
    assert [r.cell for r in executor.run(harness, cells)] == ran == cells[::-1]


# -- the command line ------------------------------------------------------------------------
def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_ray_executor_without_ray_is_one_line_naming_the_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the extra gives: ImportError
    assert main(["run", "--executor", "ray", "--store", str(tmp_path / "r.sqlite"), *RUN]) == 2
    assert 'the ray executor needs Ray, which is not installed: pip install -e ".[ray]"' in one_error_line(capsys)
    assert not (tmp_path / "r.sqlite").exists()


@pytest.mark.parametrize("args, message", [
    (["--gpus-per-cell", "0.25"], "--gpus-per-cell is an option of the ray executor, not of the 'local' executor: add --executor ray."),
    (["--ray-address", "auto"], "--ray-address is an option of the ray executor"),
    (["--executor", "rya"], "unknown executor 'rya'. Did you mean: ray?"),
    (["--executor", "ray", "--cpus-per-cell", "0"], "bad options for 'ray'"),
    (["--executor", "ray", "--gpus-per-cell", "1.5"], "gpus_per_cell above 1 must be a whole number of GPUs"),
    (["--executor", "ray:retries=-1"], "retries must be >= 0"),
    (["--executor", "ray", "--gpus-per-cell", "0.25"], "--gpus-per-cell with --device cpu would hold GPUs the cells do not use"),
])
def test_bad_executor_flags_are_one_line(args, message, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: True))  # no Ray is started
    assert main(["run", *args, "--store", str(tmp_path / "r.sqlite"), *RUN]) == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "r.sqlite").exists()  # nothing written


def test_cuda_cells_need_gpus_per_cell(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace())
    harness = types.SimpleNamespace(device=torch.device("cuda"))
    with pytest.raises(SuiteError, match="the ray executor runs cuda cells only with --gpus-per-cell"):
        next(RayExecutor().run(harness, [cell()]))


# -- pieces of the ray executor that need no Ray ---------------------------------------------
def test_the_cells_of_one_distillation_run_together_in_order():
    cells = [cell("random"), cell("random", "common"), cell("herding"), cell("herding", "common"), cell("random", seed=1)]
    assert distillations(cells) == [cells[0:2], cells[2:4], cells[4:]]


def test_a_worker_rebuilds_the_drivers_registries(manager):
    copy = rebuilt(components(manager))
    for kind, registry in manager.registries.items():
        assert copy.registries[kind].items == registry.items and copy.registries[kind].owner == registry.owner
    assert copy.plugins == manager.plugins and copy.modules() == manager.modules()


# -- provenance and the board note -----------------------------------------------------------
def test_a_shared_device_is_kept_in_provenance_and_noted_on_the_board(tmp_path):
    from ddbench.results import leaderboard

    shared = {"name": "ray", "node": "n", "cpus_per_cell": 1.0, "gpus_per_cell": 0.25, "cells_per_device": 4, "shared_device": True}
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(CellResult(cell("random"), "ok", "accuracy", [60.0], stored_params=650), "s")
        store.put(CellResult(cell("herding"), "ok", "accuracy", [70.0], stored_params=650), "s", shared)
    records = sorted(read_results(tmp_path / "r.sqlite").records, key=lambda r: r["config"]["distiller"], reverse=True)
    assert [r["provenance"].get("executor") for r in records] == [None, shared]  # random, herding
    page = leaderboard.write(records, tmp_path / "boards")[0].read_text()
    assert ("- Timing: 1 of these 2 cells ran where up to 4 cells at once shared a device (the ray executor with a fraction "
            "of a GPU or several cells per machine)") in page
    alone = leaderboard.write(records[:1], tmp_path / "alone")[0].read_text()
    assert "Timing" not in alone


# -- the local executor's cell hosts -----------------------------------------------------------
def test_the_local_executor_starts_the_largest_budgets_first():
    small, large = cell("random"), Cell("digits", {}, "random", {}, Budget.parse("ipc=10"), 0, [0], "convnet", {}, "quick")
    whole = Cell("digits", {}, "full", {}, None, 0, [0], "convnet", {}, "quick")
    assert largest_first([[small], [large], [whole]]) == [[whole], [large], [small]]


@pytest.mark.slow
def test_classes_a_cell_host_cannot_import_run_in_this_process(harness):
    class Local(Recorder):  # defined in a function: pickle cannot send it to a cell host
        name = "local-only"

    harness.manager.registries["executor"].items["local-only"] = Local
    statuses: list[str] = []
    harness.on_status = statuses.append
    suite = Suite("s", [TaskEntry("digits", [Budget.parse("ipc=1")], {"epochs": 2})], [DistillerEntry("random"),
                  DistillerEntry("herding")], eval_seeds=1, profile="quick")
    try:
        results = harness.run(suite, executor=LocalExecutor(workers=2))
    finally:
        del harness.manager.registries["executor"].items["local-only"]
    assert [r.status for r in results] == ["ok", "ok"]
    assert statuses[0].startswith("local: one cell at a time (the run's plugin classes cannot be sent to a cell host: ")


@pytest.mark.slow  # about 25 s: the same cells with one cell host and with two
def test_two_cell_hosts_give_the_numbers_of_one(tmp_path, capsys):
    args = ["--task", "digits:epochs=20", "--budget", "ipc=1", "--distiller", "random", "--distiller", "herding", "--distiller", "dm",
            "--seeds", "2", "--protocol", "native", "--protocol", "common", "--device", "cpu"]  # 20 epochs: numbers to compare, not to rank
    assert main(["run", "--executor", "local:workers=1", "--store", str(tmp_path / "one.sqlite"), *args]) == 0
    assert main(["run", "--executor", "local:workers=2", "--store", str(tmp_path / "two.sqlite"), *args]) == 0
    assert capsys.readouterr().err.count("6 cells run in") == 2
    one, two = stored(tmp_path / "one.sqlite"), stored(tmp_path / "two.sqlite")
    assert len(one) == 6 and one.keys() == two.keys()
    for key, record in one.items():
        assert record["status"] == "ok"
        assert {f: two[key][f] for f in SAME} == {f: record[f] for f in SAME}, record["config"]


@pytest.mark.slow  # about 20 s: two cell hosts, one killed and replaced
def test_a_killed_cell_host_fails_only_the_cells_it_held(tmp_path):
    import adversarial
    import executor_plugins
    from ddbench.run.harness import Harness

    manager = PluginManager()
    manager.load_entrypoints()
    manager.add(adversarial, "adversarial")
    manager.add(executor_plugins, "executor-plugins")
    marker = tmp_path / "attempts"
    suite = Suite("s", [TaskEntry("digits", [Budget.parse("ipc=1")], {"epochs": 10})],
                  [DistillerEntry("kill-worker", {"marker": str(marker), "kills": 1}), DistillerEntry("random"),
                   DistillerEntry("herding"), DistillerEntry("first")],
                  eval_seeds=1, profile="quick", protocols=["native", "common"])
    results = Harness(manager, "cpu", cache_dir=tmp_path / "cache").run(suite, executor=LocalExecutor(workers=2))
    status = {(r.cell.distiller, r.cell.protocol): (r.status, r.error) for r in results}
    assert marker.read_text() == "attempt\n"  # not retried
    for protocol in ("native", "common"):
        assert status["kill-worker", protocol] == ("failed", "the cell host running this cell died (killed by signal 9)")
        assert all(status[name, protocol] == ("ok", "") for name in ("random", "herding", "first")), status


# -- the ray executor on a local Ray instance (slow lane) ------------------------------------
@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray with 2 CPUs whose workers can import this folder's test plugins."""
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail('CI must test the ray executor: install the extra (pip install -e ".[test,ray]").')
        pytest.skip('ray is not installed: pip install -e ".[ray]"')
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), saved]))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        yield ray
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def stored(db: Path) -> dict[str, dict]:
    with ResultStore(db, create=False) as store:
        return {r["key"]: r for r in store.records()}


SAME = ("status", "metric", "values", "random_ref", "extra", "stored_params", "stored_bytes", "compression", "recipe",
        "regime", "model_params", "eval_mode", "error")


@pytest.mark.slow  # about 30 s: 3 cells through each executor (the common protocol under Ray: the retry test below)
def test_the_ray_executor_gives_the_local_executors_results(ray_instance, tmp_path, capsys):
    args = ["--task", "digits:epochs=20", "--budget", "ipc=1", "--distiller", "random", "--distiller", "herding", "--distiller", "dm",
            "--seeds", "2", "--device", "cpu"]  # 20 epochs: numbers to compare, not to rank
    assert main(["run", "--store", str(tmp_path / "local.sqlite"), *args]) == 0
    assert main(["run", "--executor", "ray", "--cpus-per-cell", "1", "--store", str(tmp_path / "ray.sqlite"), *args]) == 0
    assert "3 cells run in" in capsys.readouterr().err
    local, ray = stored(tmp_path / "local.sqlite"), stored(tmp_path / "ray.sqlite")
    assert len(local) == 3 and local.keys() == ray.keys()
    for key, record in local.items():
        assert record["status"] == "ok" and record["threads"] == ray[key]["threads"] == 1
        assert {f: ray[key][f] for f in SAME} == {f: record[f] for f in SAME}, record["config"]
        assert "executor" not in record["provenance"]
        assert ray[key]["provenance"]["executor"]["shared_device"] is True  # 2 CPUs, 1 per cell: two cells at once
        assert ray[key]["provenance"]["executor"]["cells_per_device"] == 2


def ray_cell_workers() -> list[int]:
    """The Ray workers of this test's Ray instance (descendants of this process) running a ddbench-cells task."""
    from executor_plugins import parent_of

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "cmdline").read_bytes().startswith(b"ray::ddbench-cells"):
                continue
            pid = int(entry.name)
            while pid > 1 and pid != os.getpid():
                pid = parent_of(pid)
        except (OSError, ValueError):
            continue
        if pid == os.getpid():
            found.append(int(entry.name))
    return found


@pytest.mark.slow  # about 12 s: a ray run whose worker is killed and retried (and the shared local reference)
def test_a_killed_ray_worker_resumes_dc_with_the_runs_threads_to_the_local_artifact(ray_instance, tmp_path, monkeypatch,
                                                                                      dc_reference):
    """A Ray worker killed in the middle of a dc distillation is retried and resumes from the last
    checkpoint. The cell holds 2 Ray CPUs but computes with the run's one thread, as the local
    executor does (dc's artifact differs bitwise at one and two threads): the artifact is the local
    uninterrupted run's, byte for byte."""
    from conftest import DC_ARGS
    from test_resume import checkpoint_step

    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)  # the run's default thread count (torch's at its start): the reference's one thread
    folder, killed = tmp_path / ".ddbench" / "cache" / "checkpoints", []

    def kill_mid_distillation() -> None:
        deadline = time.time() + 300
        while not killed and time.time() < deadline:
            step = checkpoint_step(folder)
            if step is not None and step >= 8:
                for pid in ray_cell_workers():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(step)
            time.sleep(0.01)

    killer = threading.Thread(target=kill_mid_distillation)
    killer.start()
    try:
        assert main(["run", *DC_ARGS, "--executor", "ray", "--cpus-per-cell", "2", "--checkpoint-every", "0.05",
                     "--store", "ray.sqlite", "--save-artifacts", "ray"]) == 0
    finally:
        killer.join()
    assert killed, "no Ray worker was killed"
    (ray,), ref = stored(tmp_path / "ray.sqlite").values(), dc_reference["record"]
    assert ray["status"] == "ok" and ray["resumed_from"] >= killed[0] and ref["resumed_from"] == 0
    assert ray["threads"] == ref["threads"] == 1 and ray["provenance"]["executor"]["cpus_per_cell"] == 2
    assert ray["values"] == ref["values"] and ray["random_ref"] == ref["random_ref"]
    (artifact,) = Path("ray").glob("*.safetensors")
    assert artifact.read_bytes() == dc_reference["bytes"] and not list(folder.iterdir())


@pytest.mark.slow  # about 30 s: Ray starts a fresh worker after each kill
def test_a_killed_worker_is_retried_then_fails_its_cell_and_a_failing_cell_is_not_retried(ray_instance, tmp_path):
    import adversarial
    import executor_plugins
    from ddbench.run.harness import Harness

    manager = PluginManager()
    manager.load_entrypoints()
    manager.add(adversarial, "adversarial")
    manager.add(executor_plugins, "executor-plugins")
    marks = {name: tmp_path / name for name in ("once", "always", "bug")}
    suite = Suite("s", [TaskEntry("digits", [Budget.parse("ipc=1")])],
                  [DistillerEntry("kill-worker", {"marker": str(marks["once"]), "kills": 1}),
                   DistillerEntry("kill-worker", {"marker": str(marks["always"]), "kills": 99}),
                   DistillerEntry("kill-worker", {"marker": str(marks["bug"]), "kills": 0, "fail": True})],
                  eval_seeds=1, profile="quick")
    harness = Harness(manager, "cpu", cache_dir=tmp_path / "cache")
    executor = RayExecutor(retries=1)
    results = {r.cell.distiller_options["marker"]: r for r in harness.run(suite, executor=executor)}
    attempts = {name: len(path.read_text().splitlines()) for name, path in marks.items()}
    once, always, bug = (results[str(marks[n])] for n in ("once", "always", "bug"))
    assert once.status == "ok" and attempts["once"] == 2, once.error
    assert always.status == "failed" and attempts["always"] == 2  # the first try and one retry
    assert always.error.startswith("the ray executor could not run this cell: its Ray worker died 2 time(s)")
    assert bug.status == "failed" and attempts["bug"] == 1 and bug.error == "RuntimeError: a bug in the plugin"
    assert executor.provenance(once)["name"] == "ray" and executor.provenance(always) == {"name": "ray"}


def rows(db: Path) -> dict[str, str]:
    if not db.exists():
        return {}
    with sqlite3.connect(db, timeout=30) as con:
        if not con.execute("SELECT name FROM sqlite_master WHERE name = 'cells'").fetchone():
            return {}
        return dict(con.execute("SELECT key, status FROM cells"))


@pytest.mark.slow  # about 30 s: two drivers join the test's Ray instance
def test_sigkill_of_the_driver_loses_no_finished_cell(ray_instance, tmp_path):
    from test_interrupts import RUN_WITH_ADVERSARIAL

    db = tmp_path / "r.sqlite"
    address = ray_instance.get_runtime_context().gcs_address
    base = [sys.executable, "-c", RUN_WITH_ADVERSARIAL, "run", "--executor", "ray", "--ray-address", address, "--store", str(db),
            "--task", "digits", "--budget", "ipc=1", "--seeds", "1", "--device", "cpu", "--distiller", "first"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([*base, "--distiller", "misbehave:mode=sleep,seconds=300"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300  # a bound for a loaded machine: it takes about 10 s on an idle one
        while not rows(db) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None and list(rows(db).values()) == ["ok"], proc.stderr.read() if proc.poll() is not None else ""
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    deadline = time.time() + 60  # Ray ends the dead driver's tasks: the sleeping cell gives its CPU back
    while ray_instance.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert ray_instance.available_resources().get("CPU", 0) == 2
    with ResultStore(db) as store:
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finished = rows(db)
    rerun = subprocess.run(base, cwd=tmp_path, env=env, text=True, capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "1 cells (1 already in" in rerun.stderr and "0 cells run in" in rerun.stderr
    assert rows(db) == finished
