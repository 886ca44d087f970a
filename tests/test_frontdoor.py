"""The front door ranks the methods as their papers do: on the quick default suite's digits task,
every gradient-matching and trajectory-matching distiller (and herding) beats the random subset
at both budgets under its own recipe, as DC, DSA, DM and MTT report on every dataset they publish."""
from __future__ import annotations

import pytest

from ddbench.run.suite import DistillerEntry, default_suite

BEATS_RANDOM = ("dc", "dsa", "dm", "mtt", "herding")


@pytest.mark.slow
def test_every_method_beats_random_on_the_front_door(harness):
    suite = default_suite()
    suite.tasks = [t for t in suite.tasks if t.name == "digits"]
    suite.distillers = [DistillerEntry(name) for name in BEATS_RANDOM]
    suite.protocols = ["native"]
    results = [r for r in harness.run(suite) if r.cell.distiller in BEATS_RANDOM]
    assert {(r.cell.distiller, str(r.cell.budget)) for r in results} == {(d, b) for d in BEATS_RANDOM for b in ("ipc=1", "ipc=10")}
    losing = [f"{r.cell.distiller} {r.cell.budget}: {r.mean:.2f} vs random {r.random_ref:.2f}" for r in results
              if r.status != "ok" or r.gain is None or r.gain <= 0]
    assert not losing, f"a method does not beat random on the front door: {losing}"
