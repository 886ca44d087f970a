"""The import graph has three floors: plugins -> the toolkit (ddbench.ops) -> the core; no plugin
imports another, the core imports and names no plugin, and nothing imports in a circle."""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").exists())
KINDS = ("task", "learner", "distiller")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT / "plugins" if path.is_relative_to(ROOT / "plugins") else ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def sources() -> Iterator[Path]:
    yield from sorted((ROOT / "ddbench").rglob("*.py"))
    yield from sorted((ROOT / "plugins").rglob("*.py"))


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports: top-level, in functions and under TYPE_CHECKING alike."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


MODULES = {module_name(p): p for p in sources()}


def graph() -> dict[str, set[str]]:
    return {name: {m for m in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


@pytest.mark.parametrize("plugin", PLUGINS)
def test_no_plugin_imports_another(plugin):
    crossing = sorted(f"{name} imports {m}" for name, deps in graph().items() if name.split(".")[0] == plugin
                      for m in deps if m.split(".")[0] in PLUGINS and m.split(".")[0] != plugin)
    assert not crossing, f"{crossing}: move the shared code into ddbench.ops (docs/toolkit.md)."


def test_the_core_imports_no_plugin():
    crossing = sorted(f"{name} imports {m}" for name, deps in graph().items() if name.startswith("ddbench")
                      and name.split(".")[0] == "ddbench" for m in deps if m.split(".")[0] in PLUGINS)
    assert not crossing


def test_the_core_looks_up_no_component_by_a_literal_name():
    """A lookup such as ``manager.distillers.get("random")`` in the core would tie it to a plugin."""
    found = []
    for path in sorted((ROOT / "ddbench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "owner"):
                args = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                if (len(args) == 2 and args[0] in KINDS) or (isinstance(node.func.value, ast.Attribute)
                                                            and node.func.value.attr in ("tasks", "learners", "distillers") and args):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert not found


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in sorted(edges[name]):
            if state.get(dep) == 1:
                pytest.fail("import circle: " + " -> ".join(trail[trail.index(dep):] + [dep]) if dep in trail else dep)
            if dep not in state:
                visit(dep, trail + [dep])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def test_the_toolkit_is_documented():
    doc = (ROOT / "docs" / "toolkit.md").read_text()
    for path in sorted((ROOT / "ddbench" / "ops").glob("*.py")):
        if path.stem != "__init__":
            assert f"ddbench.ops.{path.stem}" in doc, f"document ddbench.ops.{path.stem} in docs/toolkit.md"


def test_the_training_engines_share_only_the_steps():
    """The sequential engine (ops.training) and the vmapped one (ops.ensemble) import nothing from
    each other, and what they share (ops.steps) imports neither: an evaluation's walk goes down."""
    engines = {"ddbench.ops.training", "ddbench.ops.ensemble", "ddbench.ops.classifier"}
    edges = graph()
    crossing = sorted(f"{name} imports {m}" for name in engines | {"ddbench.ops.steps"} for m in edges[name]
                      if m in engines and name != "ddbench.ops.classifier")
    assert not crossing, f"{crossing}: move what both engines need into ddbench.ops.steps (docs/toolkit.md)."
