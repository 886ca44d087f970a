"""Deprecated: the ensemble code moved to the toolkit, :mod:`ddbench.ops.ensemble`; import it from there."""
from __future__ import annotations

import warnings

from ddbench.ops.ensemble import *  # noqa: F401,F403 - the old names, for plugins written before the move

warnings.warn("ddbench_learners.ensemble is deprecated: import ddbench.ops.ensemble instead.", DeprecationWarning, stacklevel=2)
