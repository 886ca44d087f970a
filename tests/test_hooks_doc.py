"""Meta-tests of docs/hooks.md: every hookspec is documented with the signature the code has, its
example registers what it says, and every hookspec is implemented by some test under tests/.
Also the registration hooks that other tests do not implement themselves (tasks, learners)."""
from __future__ import annotations

import ast
import re
import sys
import types
from pathlib import Path

import pytest
import torch

import ddbench.hookspecs
from ddbench import Artifact, Learner, hookimpl
from ddbench.errors import PluginError
from ddbench.plugins import PluginManager
from ddbench.testing import TinyClassification, check_distiller, task_view

ROOT = Path(__file__).resolve().parents[1]
HOOKS_MD = ROOT / "docs" / "hooks.md"
KIND_OF_HOOK = {"ddbench_register_tasks": "task", "ddbench_register_learners": "learner",
                "ddbench_register_distillers": "distiller"}


def hookspecs() -> dict[str, ast.FunctionDef]:
    """The functions of ddbench/hookspecs.py decorated with ``@hookspec`` (or ``@hookspec(...)``)."""
    tree = ast.parse(Path(ddbench.hookspecs.__file__).read_text())
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
    assert set(hookspecs()) == {name for name in dir(ddbench.hookspecs) if name.startswith("ddbench_")}


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
    assert not stale, f"docs/hooks.md documents {sorted(stale)}, which ddbench/hookspecs.py does not declare."


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
    cls = manager.get(kind, registered[kind][0])
    if kind == "task":
        data = cls().load()
        assert len(data.train) == 1400 and data.train.x.shape[1:] == cls.input_shape
    elif kind == "learner":
        view = task_view(TinyClassification())
        learner = cls()
        artifact = Artifact({"x": view.train.x, "y": view.train.y})
        model = learner.fit(learner.build(view, 0), artifact, TinyClassification().recipe("quick"), torch.Generator())
        assert learner.predict(model, view.val.x).shape == (len(view.val), 3)
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
    assert manager.get("task", "tiny-classification") is TinyClassification
    assert manager.plugins["kit"].registered["task"] == ["tiny-classification"]
    with pytest.raises(PluginError, match="plugin 'wrong' registered task 'constant' that does not implement the Task interface"):
        manager.add(types.SimpleNamespace(ddbench_register_tasks=hookimpl(lambda register: register(Constant))), "wrong")


def test_register_learners_hook_validates_learners():
    manager = PluginManager()
    manager.add(types.SimpleNamespace(ddbench_register_learners=hookimpl(lambda register: register(Constant))), "const")
    assert manager.get("learner", "constant") is Constant
    with pytest.raises(PluginError, match="registered learner 'tiny-classification' that does not implement the Learner interface"):
        manager.add(types.SimpleNamespace(ddbench_register_learners=hookimpl(lambda register: register(TinyClassification))), "w")
    assert "w" not in manager.plugins
