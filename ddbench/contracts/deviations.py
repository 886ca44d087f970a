"""Where a built-in method departs from its authors' official code, as data (docs/methods.md).

A distiller declares its departures in one place, :attr:`ddbench.contracts.interfaces.Distiller.deviations`
(and what it was compared with in :attr:`~ddbench.contracts.interfaces.Distiller.official_code`). The
harness records those that apply to a cell (its options and profile) with the cell's result, so a
board footnotes every row with the departures it was trained under, and docs/methods.md shows each
method's whole list as a table (``ddbench ls deviations`` prints them; a test keeps the two equal).
This module imports neither torch nor the harness.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

FIELDS = ("aspect", "official", "ours", "why")
"""What a recorded departure holds (a record's ``deviations`` are dictionaries of these)."""
DOC_START, DOC_END = "<!-- deviations: {name} -->", "<!-- end deviations -->"
"""The markers around a method's generated table in docs/methods.md."""


@dataclass(frozen=True)
class Deviation:
    """One way ddbench's method differs from the official code: the ``aspect``, what the
    ``official`` code does, what ddbench does (``ours``) and ``why``.

    ``when`` says where it applies: ``""`` always; ``"profile=quick"`` in the quick profile; an
    option test ``"name=value"`` or ``"name!=value"`` on the option's value in the cell (after the
    profile's quick values and the defaults), e.g. ``"init=real"`` or ``"steps!=1000"``.
    """

    aspect: str
    official: str
    ours: str
    why: str
    when: str = ""

    def __post_init__(self) -> None:
        if self.when and self.when != "profile=quick" and "=" not in self.when:
            raise ValueError(f"deviation {self.aspect!r}: when={self.when!r} must be '', 'profile=quick', 'name=value' "
                             "or 'name!=value'")

    def applies(self, options: Mapping[str, Any], profile: str) -> bool:
        """Whether it applies to a cell whose resolved options are ``options``, under ``profile``."""
        if not self.when:
            return True
        if self.when == "profile=quick":
            return profile == "quick"
        negated = "!=" in self.when
        name, _, value = self.when.partition("!=" if negated else "=")
        return same_value(options.get(name), value) != negated

    def record(self) -> dict[str, str]:
        """The form a result stores (:data:`FIELDS`)."""
        return {k: v for k, v in asdict(self).items() if k in FIELDS}


def same_value(value: Any, text: str) -> bool:
    """Whether an option's value reads as ``text`` (numbers compared as numbers, booleans as true/false)."""
    if isinstance(value, bool):
        return text.lower() == str(value).lower()
    if isinstance(value, (int, float)):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    return str(value) == text


def resolved_options(cls: type, options: Mapping[str, Any], profile: str) -> dict[str, Any]:
    """A component's options in a cell: its constructor's defaults, the quick profile's values
    (under ``quick``) and the user's ``options``, in that order of precedence."""
    defaults = {n: p.default for n, p in inspect.signature(cls).parameters.items() if p.default is not inspect.Parameter.empty}
    quick = getattr(cls, "quick", {}) if profile == "quick" else {}
    return {**defaults, **quick, **options}


def applicable(cls: type, options: Mapping[str, Any], profile: str) -> list[dict[str, str]]:
    """The records of the departures of distiller class ``cls`` that apply to a cell with these
    user ``options`` under ``profile``."""
    resolved = resolved_options(cls, options, profile)
    return [d.record() for d in getattr(cls, "deviations", ()) if d.applies(resolved, profile)]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(deviations: Iterable[Deviation]) -> str:
    """A method's departures as a Markdown table (what docs/methods.md shows)."""
    lines = ["| aspect | official code | ddbench | why | applies |", "|---|---|---|---|---|"]
    for d in deviations:
        when = "always" if not d.when else ("quick profile" if d.when == "profile=quick" else f"`{d.when}`")
        lines.append(f"| {_cell(d.aspect)} | {_cell(d.official)} | {_cell(d.ours)} | {_cell(d.why)} | {when} |")
    return "\n".join(lines)


def doc_block(name: str, official_code: str, deviations: Iterable[Deviation]) -> str:
    """The generated block of docs/methods.md for distiller ``name``, between its markers."""
    deviations = list(deviations)
    body = table(deviations) if deviations else "None: ddbench runs the official code's settings in every aspect it implements."
    return "\n".join([DOC_START.format(name=name), f"Departures of `{name}` from the official code ({official_code}):", "",
                      body, DOC_END])
