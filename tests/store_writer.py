"""The writer process of tests/test_store.py's concurrent-writers test, in a module of its own so
that a spawned child imports only the results floor (no torch: about a second less per child)."""
from __future__ import annotations

from ddbench.results.records import Cell, CellResult
from ddbench.results.store import ResultStore
from ddbench.vocab import Budget


def fake_result(i: int, accuracy: float = 90.0) -> CellResult:
    cell = Cell("digits", {}, "random", {}, Budget("ipc", i + 1), 0, [0], "convnet", {}, "quick")
    return CellResult(cell, "ok", "accuracy", [accuracy], stored_params=650 * (i + 1), distill_s=1.0, device="cpu")


def write(path: str, offset: int, n: int) -> None:
    """``n`` results put one by one into the store at ``path``, cells ``offset`` to ``offset + n - 1``."""
    store = ResultStore(path)
    for i in range(n):
        store.put(fake_result(offset + i))
    store.close()
