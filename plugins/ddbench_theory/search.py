"""B*(eps) by search for one multi-index configuration and seed (docs/theory.md §7.1).

For each M1 in {r, 2r, r^2, 2r^2, 4r^2} the smallest M2 in [1, L] whose student reaches
R^2(teacher) - eps is found by bisection, started from the spec's grid {L/4, L/2, L}: the smallest
grid point that passes is the upper bracket, the largest failing one below it the lower. B*(eps)
is the smallest counted budget over the M1 values; an M1 whose smallest possible budget (M2 = 1)
is not below the best found so far is skipped. The bisection assumes the student's R^2 rises with
M2 at fixed M1; every evaluated pair (M2 passes, a larger M2 fails) is reported as a violation.

The random reference (docs/theory.md §7.2): the first m points of one seeded permutation of the
train split (so the subsets are nested), lambda chosen on validation, bisected over m in [1, n].

Everything evaluated goes through an :class:`Evaluator` (the study caches it); this module only
decides what to evaluate.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

RESOLUTION = 0.01  # stop bisecting M2 when B(hi) - B(lo) <= 1 % of B(hi)
RANDOM_RESOLUTION = 0.05  # and m when hi - lo <= 5 % of hi


class Evaluator(Protocol):
    """What the search reads: the student's R^2 and counted budget at (M1, M2), the random subset's R^2 at m."""

    def student(self, m1: int, m2: int) -> tuple[float, int]: ...

    def random(self, m: int) -> float: ...


def m1_values(r: int) -> list[int]:
    """docs/theory.md §7: M1 in {r, 2r, r^2, 2r^2, 4r^2}, deduplicated, ascending."""
    return sorted({r, 2 * r, r * r, 2 * r * r, 4 * r * r})


def grid_m2(width: int) -> list[int]:
    """The spec's M2 grid {L/4, L/2, L}."""
    return sorted({max(1, width // 4), max(1, width // 2), width})


@dataclass
class BStar:
    """The search's answer at one eps: B* and where it was found (None: no M1 reached the target with M2 <= L)."""

    eps: float
    target: float
    budget: int | None = None
    m1: int | None = None
    m2: int | None = None
    lower: int | None = None  # the largest budget known to fail at that M1 (B* lies in (lower, budget])
    r2: float | None = None
    grid_budget: int | None = None  # the smallest passing budget on the spec's (M1, M2) grid alone
    violations: list[dict[str, float]] = field(default_factory=list)
    skipped_m1: list[int] = field(default_factory=list)
    random_budget: int | None = None  # smallest m (d + 1) reaching the target; None: not reached within n (d + 1)
    random_r2_at_bstar: float | None = None


def bisect(passes: Callable[[int], bool], lo: int, hi: int, done: Callable[[int, int], bool]) -> tuple[int, int]:
    """The bracket (lo, hi] narrowed around the smallest passing integer, ``hi`` known to pass and ``lo``
    known to fail (or 0)."""
    while hi - lo > 1 and not done(lo, hi):
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return lo, hi


def violations(points: dict[int, float], target: float) -> list[tuple[int, int]]:
    """Pairs (a, b), a < b, where M2 = a passes and M2 = b fails: R^2 not monotone in M2 there."""
    order = sorted(points)
    out = []
    for i, a in enumerate(order):
        if points[a] >= target:
            out += [(a, b) for b in order[i + 1:] if points[b] < target]
    return out


def search(ev: Evaluator, r: int, d: int, width: int, n: int, teacher_r2: float, eps: float,
           size: Callable[[int, int], int]) -> BStar:
    """B*(eps) for one configuration and seed, with the grid's answer, the violations and the random reference."""
    out = BStar(eps, teacher_r2 - eps)
    target = out.target
    tried: dict[int, dict[int, float]] = {}

    def r2_at(m1: int, m2: int) -> float:
        r2, _ = ev.student(m1, m2)
        tried.setdefault(m1, {})[m2] = r2
        return r2

    grid = grid_m2(width)
    for m1 in m1_values(r):  # the spec's grid, every (M1, M2): the comparison and the brackets
        for m2 in grid:
            if r2_at(m1, m2) >= target and (out.grid_budget is None or size(m1, m2) < out.grid_budget):
                out.grid_budget = size(m1, m2)
    for m1 in m1_values(r):
        if out.budget is not None and size(m1, 1) >= out.budget:
            out.skipped_m1.append(m1)
            continue
        cap = width if out.budget is None else min(width, max(m2 for m2 in range(1, width + 1) if size(m1, m2) < out.budget))
        passing = [m2 for m2 in grid if m2 <= cap and tried[m1][m2] >= target]
        if passing:
            hi = passing[0]
        elif r2_at(m1, cap) >= target:
            hi = cap
        else:
            continue
        failing = [m2 for m2 in tried[m1] if m2 < hi and tried[m1][m2] < target]
        lo = max(failing, default=0)
        lo, hi = bisect(lambda m2: r2_at(m1, m2) >= target, lo, hi,  # noqa: B023 - bisect() calls it at once
                        lambda lo, hi: size(m1, hi) - size(m1, lo) <= RESOLUTION * size(m1, hi))  # noqa: B023 - bisect() calls it at once
        out.budget, out.m1, out.m2, out.r2 = size(m1, hi), m1, hi, tried[m1][hi]
        out.lower = size(m1, lo) if lo > 0 else None
    for m1, points in tried.items():
        out.violations += [{"m1": m1, "m2_pass": a, "m2_fail": b, "r2_pass": points[a], "r2_fail": points[b]}
                           for a, b in violations(points, target)]
    random_reference(ev, out, d, n)
    return out


def random_reference(ev: Evaluator, out: BStar, d: int, n: int) -> None:
    """The random subset's R^2 at the student's B* and its own smallest budget reaching the target."""
    if out.budget is not None and out.budget // (d + 1) >= 1:
        out.random_r2_at_bstar = ev.random(out.budget // (d + 1))
    if ev.random(n) < out.target:
        return
    _, hi = bisect(lambda m: ev.random(m) >= out.target, 0, n, lambda lo, hi: hi - lo <= RANDOM_RESOLUTION * hi)
    out.random_budget = hi * (d + 1)
