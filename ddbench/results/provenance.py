"""Where a result came from: package and plugin versions, git commit, Python and torch (read from
package metadata, so that records and boards import no torch)."""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

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
    """Versions of ddbench, of the plugins' distributions (those of ``manager``, a
    :class:`~ddbench.plugins.PluginManager`, else every installed ``ddbench`` entry point), torch
    and Python, and the git commit."""
    if manager is not None:
        plugins = {name: info.version for name, info in manager.plugins.items()}
    else:
        plugins = {ep.name: ep.dist.version if ep.dist is not None else "?"
                   for ep in sorted(metadata.entry_points(group="ddbench"), key=lambda e: e.name)}
    return {"ddbench": ddbench.__version__, "commit": git_commit(), "torch": metadata.version("torch"),
            "python": platform.python_version(), "plugins": plugins}
