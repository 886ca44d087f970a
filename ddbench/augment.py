"""Deprecated home of the augmentations: import :mod:`ddbench.ops.augment` instead."""
from __future__ import annotations

import warnings

from ddbench.ops.augment import (  # noqa: F401 - re-exported for old imports
    CROP_RATIO, CUTOUT_RATIO, DSA, FAMILIES, ROTATE_DEG, SCALE, DCAugment, Transform, apply, parse_strategy, transforms,
)

warnings.warn("ddbench.augment is deprecated: import ddbench.ops.augment instead.", DeprecationWarning, stacklevel=2)
