"""The import graph has floors, each importing only those below it (docs/design.md §1):

    vocab, errors  <  results  <  contracts  <  plugins  <  budget  <  ops  <  run  <  analysis  <  testing  <  cli

with the plugins above them all. No plugin imports another, the core imports and names no plugin,
nothing imports in a circle, and the floor and results/ reach no torch through any chain of imports.
Every import counts (top level and inside functions); those under ``if TYPE_CHECKING:`` do not,
since they never run."""
from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").exists())
KINDS = ("task", "learner", "distiller")
FLOORS = (("vocab", "errors"), ("results",), ("contracts",), ("plugins",), ("budget",), ("ops",), ("run",), ("analysis",),
          ("testing",), ("cli",))
TORCH_FREE = ("vocab", "errors", "results")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT / "plugins" if path.is_relative_to(ROOT / "plugins") else ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def sources() -> Iterator[Path]:
    yield from sorted((ROOT / "ddbench").rglob("*.py"))
    yield from sorted((ROOT / "plugins").rglob("*.py"))


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


@functools.cache
def imports(path: Path) -> frozenset[str]:
    """Every module ``path`` imports when it runs: top-level and in functions, not under TYPE_CHECKING."""
    found = set()
    stack: list[ast.AST] = [ast.parse(path.read_text())]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
        stack.extend(n for n in ast.iter_child_nodes(node) if not _type_checking(n))
    return frozenset(found)


MODULES = {module_name(p): p for p in sources()}


@functools.cache
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
                pytest.fail("import circle: " + " -> ".join([*trail[trail.index(dep):], dep]) if dep in trail else dep)
            if dep not in state:
                visit(dep, [*trail, dep])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def test_the_toolkit_is_documented():
    doc = (ROOT / "docs" / "toolkit.md").read_text()
    for path in sorted((ROOT / "ddbench" / "ops").glob("*.py")):
        if path.stem != "__init__":
            assert f"ddbench.ops.{path.stem}" in doc, f"document ddbench.ops.{path.stem} in docs/toolkit.md"


def floor(name: str) -> int:
    """The index in FLOORS of a ddbench module (``ddbench.run.harness`` -> that of ``run``)."""
    top = name.split(".")[1]
    return next(i for i, names in enumerate(FLOORS) if top in names)


def executed(module: str) -> set[str]:
    """``module`` and the packages above it, which importing it runs first."""
    parts = module.split(".")
    return {".".join(parts[:k]) for k in range(1, len(parts) + 1)} & set(MODULES)


def test_every_top_level_entry_has_a_floor():
    entries = {p.stem for p in (ROOT / "ddbench").iterdir() if p.name != "__init__.py" and (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert entries == {n for names in FLOORS for n in names}


def test_each_floor_imports_only_the_floors_below():
    upward = sorted(f"{name} imports {dep}" for name, deps in graph().items() if name.startswith("ddbench.")
                    for dep in deps if dep.startswith("ddbench.") and floor(dep) > floor(name))
    assert not upward, f"{upward}: move the shared code down a floor, or the importing code up."


def test_the_floor_and_results_reach_no_torch():
    edges = graph()
    torch_users = {name for name, path in MODULES.items() if any(m == "torch" or m.startswith("torch.") for m in imports(path))}
    for start in sorted(n for n in MODULES if n.startswith("ddbench.") and n.split(".")[1] in TORCH_FREE):
        seen, todo = set(), [start]
        trail: dict[str, str] = {}
        while todo:
            name = todo.pop()
            for dep in sorted(edges.get(name, set()) | executed(name)):
                if dep not in seen:
                    seen.add(dep)
                    trail[dep] = name
                    todo.append(dep)
        reached = sorted(seen & torch_users)
        if reached:
            chain, at = [reached[0]], reached[0]
            while at != start and at in trail:
                at = trail[at]
                chain.append(at)
            pytest.fail(f"{start} reaches torch: {' <- '.join(chain)}")


def test_no_module_only_re_exports():
    """A module whose body is imports (and ``__all__``) alone is a shim: import from the real home."""
    shims = []
    for path in sources():
        body = [n for n in ast.parse(path.read_text()).body
                if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))  # docstrings
                and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
        if body and all(isinstance(n, (ast.Import, ast.ImportFrom)) or (isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "__all__")
                        for n in body):
            shims.append(str(path.relative_to(ROOT)))
    assert not shims


def test_the_readme_layout_names_every_package_and_plugin():
    text = (ROOT / "README.md").read_text()
    layout = text[text.index("## Layout"):].split("\n## ")[0]
    entries = sorted(p.name for p in (ROOT / "ddbench").iterdir() if p.suffix == ".py" or (p / "__init__.py").exists())
    missing = [e for e in entries if e != "__init__.py" and f"{e}/`" not in layout and f"{e}`" not in layout]
    missing += [p for p in PLUGINS if p not in layout]
    assert not missing, f"{missing}: add them to the README's Layout table"


def test_the_training_engines_share_only_the_steps():
    """The sequential engine (ops.training) and the vmapped one (ops.ensemble) import nothing from
    each other, and what they share (ops.steps) imports neither: an evaluation's walk goes down."""
    engines = {"ddbench.ops.training", "ddbench.ops.ensemble", "ddbench.ops.classifier"}
    edges = graph()
    crossing = sorted(f"{name} imports {m}" for name in engines | {"ddbench.ops.steps"} for m in edges[name]
                      if m in engines and name != "ddbench.ops.classifier")
    assert not crossing, f"{crossing}: move what both engines need into ddbench.ops.steps (docs/toolkit.md)."
