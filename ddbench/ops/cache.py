"""What keys the on-disk caches of trained weights (MTT's experts, the label regimes' teachers)."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from ddbench.contracts.interfaces import Split


def fingerprint(split: Split) -> str:
    """A short, device-independent summary of a split's contents (part of a cache key)."""
    x, y = split.x.double(), split.y.double()
    ramp = torch.arange(1, x[0].numel() + 1, device=x.device)  # position-weighted: catches permuted pixels
    stats = torch.stack([x.sum(), x.pow(2).sum(), (x.flatten(1) * ramp).sum(), y.sum()])
    return f"{tuple(split.x.shape)}:" + ",".join(f"{v:.9g}" for v in stats.tolist())


def cache_key(config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``config`` and this process's torch thread count as plain JSON values, and their 16-hex-digit
    hash (the cache folder's name). Trained weights follow the thread count on a CPU (fp32 sums), so
    a cache filled at two threads never serves a run at one."""
    plain = json.loads(json.dumps({**config, "threads": torch.get_num_threads()}, sort_keys=True, default=str))
    return plain, hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]
