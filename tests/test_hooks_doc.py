"""Meta-tests of docs/hooks.md: every hookspec is documented with the signature the code has, its
example registers (for commands and reports: runs) what it says, and every hookspec is implemented
by some test under tests/. Also the hooks that other tests do not implement themselves (tasks,
learners, commands, reports)."""
from __future__ import annotations

import ast
import re
import sys
import types
from pathlib import Path

import pytest
import torch

import ddbench.contracts.hookspecs
from ddbench import Artifact, Learner, hookimpl
from ddbench.cli import build_parser, main
from ddbench.contracts.hookspecs import Command, Report
from ddbench.errors import PluginError
from ddbench.plugins import PluginManager
from ddbench.testing import TinyClassification, check_distiller, task_view

ROOT = Path(__file__).resolve().parents[1]
HOOKS_MD = ROOT / "docs" / "hooks.md"
KIND_OF_HOOK = {"ddbench_register_tasks": "task", "ddbench_register_learners": "learner",
                "ddbench_register_distillers": "distiller", "ddbench_register_analyses": "analysis"}


def hookspecs() -> dict[str, ast.FunctionDef]:
    """The functions of ddbench/contracts/hookspecs.py decorated with ``@hookspec`` (or ``@hookspec(...)``)."""
    tree = ast.parse(Path(ddbench.contracts.hookspecs.__file__).read_text())
    specs = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names = [d.func.id if isinstance(d, ast.Call) else getattr(d, "id", "") for d in node.decorator_list]
            if "hookspec" in names:
                specs[node.name] = node
    return specs


def signature(node: ast.FunctionDef) -> str:
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"def {node.name}({ast.unparse(node.args)}){returns}"


def sections() -> dict[str, str]:
    """``## ddbench_*`` heading -> the text under it, from docs/hooks.md."""
    parts = re.split(r"^## ", HOOKS_MD.read_text(), flags=re.M)
    return {p.split("\n", 1)[0].strip(): p.split("\n", 1)[1] for p in parts[1:] if p.startswith("ddbench_")}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_hookspecs_are_found():
    assert set(hookspecs()) >= set(KIND_OF_HOOK)
    assert set(hookspecs()) == {name for name in dir(ddbench.contracts.hookspecs) if name.startswith("ddbench_")}


@pytest.mark.parametrize("name", sorted(hookspecs()))
def test_hook_documented_with_the_exact_signature(name):
    section = sections().get(name)
    assert section is not None, f"docs/hooks.md has no '## {name}' section: document the hook there."
    blocks = python_blocks(section)
    assert blocks, f"docs/hooks.md '## {name}' has no python block: start it with the signature."
    assert blocks[0].strip() == signature(hookspecs()[name]), (
        f"docs/hooks.md '## {name}' shows {blocks[0].strip()!r}, the code has {signature(hookspecs()[name])!r}: copy the code's."
    )
    decorator = next(d for d in hookspecs()[name].decorator_list if "hookspec" in ast.unparse(d))
    for keyword in getattr(decorator, "keywords", []):  # e.g. firstresult=True changes how callers read results
        assert f"{keyword.arg}" in section, f"docs/hooks.md '## {name}' does not mention {keyword.arg}."
    for part in ("**When:**", "**`register` accepts:**" if name in KIND_OF_HOOK else "", "**Example:**"):
        assert part in section, f"docs/hooks.md '## {name}' lacks {part!r}."


def test_no_documented_hook_is_missing_from_the_code():
    stale = set(sections()) - set(hookspecs())
    assert not stale, f"docs/hooks.md documents {sorted(stale)}, which ddbench/contracts/hookspecs.py does not declare."


@pytest.mark.parametrize("name", sorted(hookspecs()))
def test_every_hook_is_implemented_by_a_test(name):
    pattern = re.compile(rf"\bdef {name}\(|\b{name}\s*=")
    users = [p.name for p in (ROOT / "tests").rglob("*.py") if pattern.search(p.read_text())]
    assert users, f"no test under tests/ implements {name}: add one that registers a plugin with it."


@pytest.mark.parametrize("name", sorted(KIND_OF_HOOK))
def test_documented_example_registers_through_its_hook(name, monkeypatch):
    """Each hook's example, run as a plugin module, registers one component of the hook's kind."""
    module = types.ModuleType(f"hooks_md_{name}")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # importable by name, as a plugin module is
    exec(compile(python_blocks(sections()[name])[-1], f"docs/hooks.md ({name})", "exec"), module.__dict__)
    manager = PluginManager()
    manager.add(module, "doc-example")
    kind = KIND_OF_HOOK[name]
    registered = manager.plugins["doc-example"].registered
    assert len(registered[kind]) == 1 and not any(v for k, v in registered.items() if k != kind)
    cls = manager.registries[kind].get(registered[kind][0])
    if kind == "task":
        data = cls().load()
        assert len(data.train) == 1400 and data.train.x.shape[1:] == cls.input_shape
    elif kind == "learner":
        view = task_view(TinyClassification())
        learner = cls()
        artifact = Artifact({"x": view.train.x, "y": view.train.y})
        model = learner.fit(learner.build(view, 0), artifact, TinyClassification().recipe("quick"), torch.Generator())
        assert learner.predict(model, view.val.x).shape == (len(view.val), 3)
    elif kind == "analysis":
        from ddbench.analysis.runner import AnalysisContext, run_analysis
        from ddbench.contracts.analysis import Subject

        task = TinyClassification()
        view = task_view(task)
        subject = Subject("k", "tiny", Artifact({"x": view.train.x, "y": view.train.y}), task, view, view.val, Constant(),
                          "constant", task.recipe("quick"))
        row = run_analysis(cls(), cls.name, subject, AnalysisContext(torch.device("cpu")))
        assert row.status == "ok" and row.metrics, row.error
    else:
        assert check_distiller(cls).passed


class Constant(Learner):
    """A learner that does not train (registration tests only)."""

    name = "constant"

    def build(self, task, seed):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(task.input_size, task.num_classes))

    def fit(self, model, artifact, recipe, generator):
        return model


def test_register_tasks_hook_validates_tasks():
    manager = PluginManager()
    manager.add(types.SimpleNamespace(ddbench_register_tasks=hookimpl(lambda register: register(TinyClassification))), "kit")
    assert manager.tasks.get("tiny-classification") is TinyClassification
    assert manager.plugins["kit"].registered["task"] == ["tiny-classification"]
    with pytest.raises(PluginError, match="plugin 'wrong' registered task 'constant' \\(Constant\\), which is not a subclass of ddbench.contracts.interfaces.Task"):
        manager.add(types.SimpleNamespace(ddbench_register_tasks=hookimpl(lambda register: register(Constant))), "wrong")


def test_register_learners_hook_validates_learners():
    manager = PluginManager()
    manager.add(types.SimpleNamespace(ddbench_register_learners=hookimpl(lambda register: register(Constant))), "const")
    assert manager.learners.get("constant") is Constant
    with pytest.raises(PluginError, match="registered learner 'tiny-classification' \\(TinyClassification\\), which is not a subclass of ddbench.contracts.interfaces.Learner"):
        manager.add(types.SimpleNamespace(ddbench_register_learners=hookimpl(lambda register: register(TinyClassification))), "w")
    assert "w" not in manager.plugins


# -- the command and report hooks ------------------------------------------------------------
def example_plugin(name: str, monkeypatch) -> PluginManager:
    """A manager with the example of ``name`` in docs/hooks.md loaded as the plugin ``doc-example``."""
    module = types.ModuleType(f"hooks_md_{name}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(python_blocks(sections()[name])[-1], f"docs/hooks.md ({name})", "exec"), module.__dict__)
    manager = PluginManager()
    manager.add(module, "doc-example")
    return manager


def stored(tmp_path: Path) -> Path:
    from ddbench import Budget
    from ddbench.results.records import Cell, CellResult
    from ddbench.results.store import ResultStore

    with ResultStore(tmp_path / "r.sqlite") as store:
        for distiller, accuracy in (("random", 60.0), ("herding", 70.0)):
            cell = Cell("digits", {}, distiller, {}, Budget.parse("ipc=1"), 0, [0], "convnet", {}, "quick")
            store.put(CellResult(cell, "ok", "accuracy", [accuracy], stored_params=650, higher_is_better={"accuracy": True}))
    return tmp_path / "r.sqlite"


def test_documented_command_example_runs_as_a_subcommand(monkeypatch, tmp_path, capsys):
    manager = example_plugin("ddbench_register_commands", monkeypatch)
    ((plugin, command),) = manager.commands()
    assert plugin == "doc-example" and command.name == "count-cells" and not manager.reports()
    args = build_parser(manager).parse_args(["count-cells", "--store", str(stored(tmp_path))])
    assert args.handler(args) == 0 and capsys.readouterr().out == "digits: 2 ok\n"


def test_documented_report_example_writes_beside_the_boards(monkeypatch, tmp_path):
    from ddbench.results.store import read_results

    manager = example_plugin("ddbench_register_reports", monkeypatch)
    ((plugin, report),) = manager.reports()
    assert plugin == "doc-example" and report.name == "best"
    (path,) = report.write(read_results(stored(tmp_path)).records, tmp_path / "out")
    assert path.read_text().splitlines()[-1] == "| digits | ipc=1 | herding | 70.00 |"
    assert report.write([], tmp_path / "none") == [] and not (tmp_path / "none").exists()


def command(name: str, code: int = 0) -> Command:
    return Command(name, f"the {name} command", lambda args: code)


@pytest.mark.parametrize("registered, message", [
    (lambda register: register("not a command"), "registered 'not a command' as a command: register a ddbench.contracts.hookspecs.Command"),
    (lambda register: register(command("Bad Name")), "a command named 'Bad Name': use lower-case letters"),
    (lambda register: [register(command("twice")), register(command("twice"))], "command 'twice', already registered by plugin 'p'"),
    (lambda register: 1 / 0, "plugin 'p' raised while registering commands: ZeroDivisionError"),
])
def test_register_commands_hook_validates_commands(registered, message):
    manager = PluginManager()
    manager.add(types.SimpleNamespace(ddbench_register_commands=hookimpl(registered)), "p")
    with pytest.raises(PluginError, match=re.escape(message)):
        manager.commands()


def test_a_plugin_command_cannot_take_a_ddbench_command(capsys, monkeypatch):
    manager = PluginManager()
    manager.add(types.SimpleNamespace(ddbench_register_commands=hookimpl(lambda register: register(command("run")))), "taker")
    with pytest.raises(PluginError, match="plugin 'taker' registered command 'run', which is a ddbench command: rename it"):
        build_parser(manager)
    monkeypatch.setattr("ddbench.cli.get_plugin_manager", lambda: manager)
    assert main(["ls", "tasks"]) == 2  # one line, exit 2, for every command: the parser cannot be built
    assert capsys.readouterr().err.startswith("ddbench: error: plugin 'taker' registered command 'run'")


def test_a_plugin_command_runs_through_main_with_its_exit_status(monkeypatch):
    manager = PluginManager()
    manager.add(types.SimpleNamespace(ddbench_register_commands=hookimpl(lambda register: register(command("fails", 3)))), "p")
    monkeypatch.setattr("ddbench.cli.get_plugin_manager", lambda: manager)
    assert main(["fails"]) == 3


def test_register_reports_hook_validates_reports():
    manager = PluginManager()
    write = lambda records, out: []  # noqa: E731 - a one-line helper
    manager.add(types.SimpleNamespace(ddbench_register_reports=hookimpl(lambda register: register(Report("mine", write)))), "a")
    manager.add(types.SimpleNamespace(ddbench_register_reports=hookimpl(lambda register: register(Report("mine", write)))), "b")
    with pytest.raises(PluginError, match="plugin 'b' registered report 'mine', already registered by plugin 'a'"):
        manager.reports()
