"""Deprecated: the training code moved to the toolkit, :mod:`ddbench.ops.training`; import it from there."""
from __future__ import annotations

import warnings

from ddbench.ops.training import *  # noqa: F401,F403 - the old names, for plugins written before the move

warnings.warn("ddbench_learners.training is deprecated: import ddbench.ops.training instead.", DeprecationWarning, stacklevel=2)
