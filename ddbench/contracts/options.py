"""Checks of a component's option values, one way for every plugin.

A component's options are its constructor's keyword arguments; its ``__init__`` (or a dataclass's
``__post_init__``) checks their values with these helpers, which raise a ``ValueError`` with one
uniform sentence. The plugin manager turns it into the one-line ``bad options for ...`` error.
``None`` always passes: it means "the published default" for options that take one.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def one_of(what: str, value: Any, choices: Iterable[Any]) -> None:
    """``value`` must be one of ``choices``."""
    choices = tuple(choices)
    if value is not None and value not in choices:
        raise ValueError(f"unknown {what} {value!r}: use one of {', '.join(map(str, choices))}")


def flags(**values: bool) -> None:
    """Each value must be ``True`` or ``False`` (a string such as ``"maybe"`` or ``"no"`` is not read as truthy)."""
    for name, value in values.items():
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false (got {value!r})")


def positive(**values: float | None) -> None:
    """Each value must be > 0."""
    for name, value in values.items():
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive (got {value!r})")


def non_negative(**values: float | None) -> None:
    """Each value must be >= 0."""
    for name, value in values.items():
        if value is not None and not value >= 0:
            raise ValueError(f"{name} must be >= 0 (got {value!r})")


def within(name: str, value: float | None, low: float, high: float, *, high_open: bool = True, low_open: bool = False) -> None:
    """``value`` must lie in the interval from ``low`` to ``high`` (closed or open at each end)."""
    if value is None:
        return
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {interval} (got {value!r})")
