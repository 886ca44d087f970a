"""Built-in analyses of distilled data (docs/analyses.md): after Yang, Zhu, Deng & Russakovsky,
"What is Dataset Distillation Learning?" (ICML 2024)."""
from __future__ import annotations

from collections.abc import Callable

from ddbench import hookimpl

from .agreement import EarlyAgreement
from .influence import PointwiseInfluence
from .mixing import Mixing
from .recognition import Recognition


@hookimpl
def ddbench_register_analyses(register: Callable[[type], None]) -> None:
    for cls in (Mixing, Recognition, EarlyAgreement, PointwiseInfluence):
        register(cls)
