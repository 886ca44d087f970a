"""Every built-in method declares where it departs from its official code, and docs/methods.md shows
exactly that (ddbench.contracts.deviations)."""
from __future__ import annotations

from pathlib import Path

import pytest

from ddbench.contracts.deviations import Deviation, applicable, doc_block, resolved_options
from ddbench.plugins import get_plugin_manager
from ddbench.results.records import footnote

ROOT = Path(__file__).resolve().parents[1]
MANAGER = get_plugin_manager()
BUILT_IN = [n for n in MANAGER.names("distiller") if MANAGER.owner("distiller", n) in
            ("baselines", "gradmatch", "mtt", "sre", "mgdd", "theory")]


def test_every_built_in_distiller_is_covered():
    assert {"dc", "dsa", "dm", "mtt", "seqmatch", "sre2l", "dwa", "mgdd", "random", "herding", "full", "two-stage"} <= set(BUILT_IN)


@pytest.mark.parametrize("name", BUILT_IN)
def test_a_built_in_distiller_declares_its_official_code_and_departures_itself(name):
    cls = MANAGER.distillers.get(name)
    assert "official_code" in vars(cls) and cls.official_code.strip(), f"{name}: declare official_code in its class body"
    assert "deviations" in vars(cls), f"{name}: declare deviations in its class body (an empty tuple if there is none)"
    assert all(isinstance(d, Deviation) and d.aspect and d.official and d.ours and d.why for d in cls.deviations)
    options = set(resolved_options(cls, {}, "full"))
    for d in cls.deviations:  # an option test names an option of the method
        if d.when and d.when != "profile=quick":
            assert d.when.partition("!=" if "!=" in d.when else "=")[0] in options, f"{name}: {d.when!r} names no option"


@pytest.mark.parametrize("name", BUILT_IN)
def test_the_methods_page_shows_each_distillers_departures_as_declared(name):
    cls = MANAGER.distillers.get(name)
    block = doc_block(name, cls.official_code, cls.deviations)
    assert block in (ROOT / "docs" / "methods.md").read_text(), (
        f"docs/methods.md must hold {name}'s block exactly as `ddbench ls deviations` prints it")


def test_a_departure_applies_where_its_condition_holds():
    always, quick = Deviation("a", "o", "d", "w"), Deviation("a", "o", "d", "w", "profile=quick")
    init, steps = Deviation("a", "o", "d", "w", "init=real"), Deviation("a", "o", "d", "w", "steps!=1000")
    unset, flag = Deviation("a", "o", "d", "w", "batch=None"), Deviation("a", "o", "d", "w", "augment=true")
    assert always.applies({}, "full") and quick.applies({}, "quick") and not quick.applies({}, "full")
    assert init.applies({"init": "real"}, "full") and not init.applies({"init": "noise"}, "full")
    assert steps.applies({"steps": 100}, "quick") and not steps.applies({"steps": 1000.0}, "full")
    assert unset.applies({"batch": None}, "full") and not unset.applies({"batch": 10}, "full")
    assert flag.applies({"augment": True}, "full") and not flag.applies({"augment": False}, "full")
    with pytest.raises(ValueError, match="when="):
        Deviation("a", "o", "d", "w", "quick")


def test_a_cell_records_the_departures_its_options_and_profile_select():
    sre2l = MANAGER.distillers.get("sre2l")
    quick = {r["aspect"] for r in applicable(sre2l, {}, "quick")}
    full = {r["aspect"] for r in applicable(sre2l, {}, "full")}
    assert {"recovery steps", "teacher", "student epochs"} <= quick and not {"recovery steps", "teacher", "student epochs"} & full
    assert "initialisation" not in full and "initialisation" in {r["aspect"] for r in applicable(sre2l, {"init": "real"}, "full")}
    records = applicable(sre2l, {"init": "real"}, "full")
    assert set(records[0]) == {"aspect", "official", "ours", "why"}
    assert footnote(records[:1]).startswith("initialisation: official Gaussian noise")
