"""The torch device a run asks for by name: ``auto``, ``cpu`` or ``cuda[:N]``."""
from __future__ import annotations

import torch

from ddbench.errors import SuiteError


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SuiteError("--device cuda was requested but no CUDA device is available: use --device auto or cpu.")
    if device != "cpu" and not device.startswith("cuda"):
        raise SuiteError(f"unknown device {device!r}: use auto, cpu or cuda[:N].")
    return torch.device(device)
