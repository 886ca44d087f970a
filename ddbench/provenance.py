"""Where a result came from: package and plugin versions, git commit, Python and torch."""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

import ddbench


@functools.cache
def git_commit() -> str | None:
    """The commit of the ddbench source tree: ``$DDBENCH_COMMIT`` when set (a copy of the tree
    without its own git history, e.g. on a remote GPU machine), else ``git rev-parse`` of the
    checkout, else ``None``."""
    if os.environ.get("DDBENCH_COMMIT"):
        return os.environ["DDBENCH_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(ddbench.__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(manager: Any = None) -> dict[str, Any]:
    """Versions of ddbench, its plugins' distributions, torch and Python, and the git commit."""
    from ddbench.plugins import get_plugin_manager

    plugins = {name: info.version for name, info in (manager or get_plugin_manager()).plugins.items()}
    return {"ddbench": ddbench.__version__, "commit": git_commit(), "torch": torch.__version__,
            "python": platform.python_version(), "plugins": plugins}
