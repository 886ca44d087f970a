"""Fits of B* against d, r and L with bootstrap intervals over seeds (docs/theory.md §7.3).

A configuration's B* is the median over the seeds that reached the target; a configuration where
fewer than half the seeds did is left out of the fits. The bootstrap resamples the seeds of every
configuration with replacement (2,000 times, seeded), recomputes the medians and refits; the 95 %
interval of a parameter is the 2.5 and 97.5 percentiles of its refits.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP = 2000
BOOTSTRAP_SEED = 16


@dataclass(frozen=True)
class Key:
    """A configuration without its seed."""

    link: str
    d: int
    r: int
    width: int


Groups = dict[Key, list[float | None]]  # B* per seed (None: not reached)


def median(values: Sequence[float | None]) -> float | None:
    """Median over the seeds that reached the target, or None when fewer than half did."""
    reached = [v for v in values if v is not None]
    return float(statistics.median(reached)) if reached and 2 * len(reached) >= len(values) else None


def medians(groups: Groups) -> dict[Key, float]:
    return {k: m for k, v in groups.items() if (m := median(v)) is not None}


def _ols(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(x, y, rcond=None)[0]


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / total if total > 0 else math.nan


def power_law(points: dict[Key, float]) -> dict[str, float] | None:
    """log B* = c + s_d log d + s_r log r + s_L log L (least squares), with the R^2 in log space."""
    keys = list(points)
    if len(keys) < 5:
        return None
    x = np.array([[1.0, math.log(k.d), math.log(k.r), math.log(k.width)] for k in keys])
    y = np.log([points[k] for k in keys])
    coef = _ols(x, y)
    return {"s_d": float(coef[1]), "s_r": float(coef[2]), "s_L": float(coef[3]), "r2_log": _r2(y, x @ coef)}


def two_term(points: dict[Key, float]) -> dict[str, float] | None:
    """B* = c1 r^2 d + c2 L by non-negative least squares (two unknowns: the active sets by hand),
    its R^2 and largest relative error."""
    keys = list(points)
    if len(keys) < 3:
        return None
    y = np.array([points[k] for k in keys])
    x = np.array([[k.r**2 * k.d, k.width] for k in keys], dtype=float)
    fits = []
    for cols in ([0, 1], [0], [1]):
        coef = _ols(x[:, cols], y)
        if (coef >= 0).all():
            full = np.zeros(2)
            full[cols] = coef
            fits.append(full)
    c = min(fits, key=lambda k: float(((y - x @ k) ** 2).sum()))
    pred = x @ c
    return {"c1": float(c[0]), "c2": float(c[1]), "r2": _r2(y, pred), "max_rel_err": float((np.abs(pred - y) / y).max())}


def one_term(points: dict[Key, float], feature: Callable[[Key], float]) -> dict[str, float] | None:
    """B* = c feature (least squares through 0) and its R^2."""
    keys = list(points)
    if len(keys) < 3:
        return None
    y = np.array([points[k] for k in keys])
    x = np.array([[feature(k)] for k in keys], dtype=float)
    c = _ols(x, y)
    return {"c": float(c[0]), "r2": _r2(y, x @ c)}


def slopes(points: dict[Key, float], axis: str) -> dict[tuple, float]:
    """The log-log slope of B* in ``axis`` (d, r or width) for every group of configurations that agree on
    the other two and have at least two values of ``axis``."""
    others = {"d": ("r", "width"), "r": ("d", "width"), "width": ("d", "r")}[axis]
    groups: dict[tuple, list[Key]] = {}
    for k in points:
        groups.setdefault((k.link, *(getattr(k, o) for o in others)), []).append(k)
    out = {}
    for g, keys in sorted(groups.items()):
        if len({getattr(k, axis) for k in keys}) >= 2:
            x = np.array([[1.0, math.log(getattr(k, axis))] for k in keys])
            out[g] = float(_ols(x, np.log([points[k] for k in keys]))[1])
    return out


def implied_slope(keys: list[Key], axis: str, c1: float, c2: float) -> float:
    """The log-log slope in ``axis`` that B* = c1 r^2 d + c2 L itself has over the same configurations."""
    x = np.array([[1.0, math.log(getattr(k, axis))] for k in keys])
    y = np.log([c1 * k.r**2 * k.d + c2 * k.width for k in keys])
    return float(_ols(x, y)[1])


def bootstrap(groups: Groups, statistic: Callable[[dict[Key, float]], dict]) -> list[dict]:
    """``statistic`` of the medians of every resample of the seeds (configurations resampled independently).

    Resample ``b`` draws ``len(v)`` seed indices for every configuration in turn, as
    ``rng.integers(0, len(v), len(v))`` would; all draws are made in one call (the same stream) and
    the medians of all resamples are taken at once, with :func:`median`'s rule and arithmetic."""
    keys = list(groups)
    if not keys:
        return [value for _ in range(BOOTSTRAP) if (value := statistic({}))]
    lengths = np.array([len(groups[k]) for k in keys])
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = rng.integers(0, np.tile(np.repeat(lengths, lengths), BOOTSTRAP)).reshape(BOOTSTRAP, -1)
    width = int(lengths.max())
    values = np.full((len(keys), width + 1), np.nan)  # column `width`: the padding a short configuration draws from
    for i, k in enumerate(keys):
        values[i, : lengths[i]] = [math.nan if v is None else v for v in groups[k]]
    index = np.full((BOOTSTRAP, len(keys), width), width)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for i, (start, n) in enumerate(zip(starts, lengths)):
        index[:, i, :n] = draws[:, start : start + n]
    sample = np.sort(values[np.arange(len(keys))[None, :, None], index], axis=-1)  # not reached (nan) last
    reached = (~np.isnan(sample)).sum(-1)
    low = np.take_along_axis(sample, np.maximum(reached - 1, 0)[..., None] // 2, -1)[..., 0]
    high = np.take_along_axis(sample, (reached // 2)[..., None], -1)[..., 0]
    mids = (low + high) / 2
    kept = (reached > 0) & (2 * reached >= lengths[None, :])
    out = []
    for b in range(BOOTSTRAP):
        value = statistic({k: float(mids[b, i]) for i, k in enumerate(keys) if kept[b, i]})
        if value:
            out.append(value)
    return out


def interval(samples: list[dict], name: str) -> tuple[float, float] | None:
    """The 95 % percentile interval of ``name`` over the bootstrap samples that have it."""
    values = [s[name] for s in samples if name in s and math.isfinite(s[name])]
    if len(values) < BOOTSTRAP // 2:
        return None
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)
