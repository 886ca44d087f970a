"""``ddbench new-plugin NAME``: write a ready-to-install distiller plugin package.

The package has a pyproject with the ``ddbench`` entry point, a distiller that runs (a seeded,
class-balanced random real subset to start from), a test that uses the conformance kit
(:mod:`ddbench.testing`) and a README. ``pip install -e DIR`` then ``pytest DIR`` passes as written.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from string import Template

from ddbench.errors import DDBenchError

PLUGIN_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class ScaffoldError(DDBenchError):
    """A plugin name or target folder that ``ddbench new-plugin`` cannot use."""


@dataclass(frozen=True)
class PluginNames:
    """The names one plugin goes by: distiller and entry point, distribution, package, class."""

    name: str  # distiller name and entry-point name, e.g. "my-method"
    project: str  # distribution, e.g. "ddbench-my-method"
    package: str  # import package, e.g. "ddbench_my_method"
    cls: str  # distiller class, e.g. "MyMethod"

    @classmethod
    def of(cls, name: str) -> PluginNames:
        if not PLUGIN_NAME_RE.match(name):
            raise ScaffoldError(
                f"plugin name {name!r} is not valid: use lower-case letters and digits in words joined by '-', "
                f"starting with a letter (e.g. my-method)."
            )
        words = name.split("-")
        return cls(name, f"ddbench-{name}", "ddbench_" + "_".join(words), "".join(w.capitalize() for w in words))


PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$project"
version = "0.1.0"
description = "The $name dataset distillation method as a ddbench plugin."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["ddbench>=0.1"]

[project.optional-dependencies]
test = ["pytest>=8"]

# ddbench finds the plugin through this entry point: the module must define the hookimpl.
[project.entry-points.ddbench]
$name = "$package"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

INIT = '''\
"""The $name ddbench plugin: registers the `$name` distiller."""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl
from $package.distiller import $cls


@hookimpl
def ddbench_register_distillers(register: Callable[[type], None]) -> None:
    register($cls)
'''

DISTILLER = '''\
"""The `$name` distiller.

It starts as a seeded, class-balanced random subset of real examples, which already follows every
rule of the conformance kit (ddbench.testing). Replace the body of `distill` with your method and
keep these habits: size the artifact from the budget, draw randomness from `context.generator`,
work on `context.device`, report progress, raise BudgetError for a budget you cannot meet.
"""
from __future__ import annotations

import torch

from ddbench import Artifact, Budget, Distiller, Learner, RunContext, TaskView
from ddbench.errors import BudgetError


class $cls(Distiller):
    """$name: a seeded random real subset (ipc per class, or params / (input + 1) points)."""

    name = "$name"
    description = "$name (ddbench plugin)"
    # Options are the constructor's keyword arguments (defaults = your published values);
    # `quick = {...}` overrides them in the CPU-sized quick profile.

    def supports(self, task: TaskView, learner: Learner) -> str | None:
        return None  # or a one-line reason, e.g. "needs images" for tasks the method does not apply to

    def distill(self, task: TaskView, budget: Budget, learner: Learner, context: RunContext) -> Artifact:
        if task.num_classes is None:
            n = budget.examples(task)
            if n < 1:
                raise BudgetError(f"budget {budget} is below one example of {task.input_size + 1} scalars on {task.name!r}: raise it.")
            index = torch.randperm(len(task.train), generator=context.generator, device=context.device)[:n]
        else:
            ipc = budget.ipc(task)  # raises BudgetError below one example per class
            picks = []
            for c in range(task.num_classes):
                members = task.class_index(c)
                picks.append(members[torch.randperm(len(members), generator=context.generator, device=context.device)[:ipc]])
            index = torch.cat(picks)
        context.progress.update(1, 1)
        return Artifact({"x": task.train.x[index].clone(), "y": task.train.y[index].clone()})
'''

TEST = '''\
"""Checks of the `$name` distiller with the ddbench conformance kit (ddbench.testing)."""
from __future__ import annotations

from ddbench.testing import check_registered

from $package.distiller import $cls


def test_conformance(ddbench_check):
    """Valid, within budget, finite, seeded, on the device, reports progress, clean BudgetError."""
    report = ddbench_check($cls)
    assert [case for case in report.cases if case.status == "ok"], report.summary()


def test_registered_through_the_entry_point():
    assert check_registered($cls) == "$name"
'''

README = """\
# $project

The `$name` dataset distillation method as a [ddbench](https://pypi.org/project/ddbench/) plugin.

```bash
pip install -e ".[test]"          # registers the plugin through the `ddbench` entry point
ddbench plugins                   # lists `$name` and what it registered
ddbench run --distiller $name --task digits --budget ipc=1 --budget ipc=10
pytest                            # the conformance kit (ddbench.testing) checks the distiller
pytest --ddbench-device cuda      # the same checks on a GPU
```

Write the method in `src/$package/distiller.py`. ddbench's `docs/write-a-distiller.md` explains
the interface, the budget and the conformance rules; `docs/hooks.md` lists the hooks.
"""

FILES = {
    "pyproject.toml": PYPROJECT,
    "README.md": README,
    "src/$package/__init__.py": INIT,
    "src/$package/distiller.py": DISTILLER,
    "tests/test_$package.py": TEST,
}


def write_plugin(name: str, parent: Path | str = ".", taken: Iterable[str] = ()) -> Path:
    """Write the plugin package for distiller ``name`` under ``parent``; return its folder.

    ``taken``: distiller names already registered (the new name must not collide with them).
    """
    names = PluginNames.of(name)
    taken = list(taken)
    if name in taken:
        raise ScaffoldError(f"distiller name {name!r} is already registered by an installed plugin: choose another name.")
    root = Path(parent) / names.project
    if root.exists():
        raise ScaffoldError(f"{str(root)!r} already exists: remove it or pass another --dir.")
    fields = vars(names)
    for path, text in FILES.items():
        target = root / Template(path).substitute(fields)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(Template(text).substitute(fields))
    return root

