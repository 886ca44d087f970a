"""Differentiable Siamese Augmentation (DSA) and DC's MNIST augmentation, on the device.

Faithful to ``specs/methods.md`` §4 (DSA) and §3 (DC-augment). Everything is differentiable with
respect to the input. Parameters are drawn from explicit generators: the family from a CPU
generator (no device sync), the magnitudes from a generator on the data's device, so that a stored
:class:`AugParams` replays the exact same transform (needed by MTT's exact gradient).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
SCALE = 1.2  # sx, sy ~ U(1/1.2, 1.2)
ROTATE_DEG = 15.0  # angle ~ U(-15, 15) degrees
CROP_RATIO = 0.125  # shift s = int(0.125 H + 0.5)
CUTOUT_RATIO = 0.5  # side = int(0.5 H + 0.5)


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """``'color_crop_cutout_flip_scale_rotate'`` -> its families; unknown ones are an error."""
    families = tuple(s for s in strategy.split("_") if s)
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise ValueError(f"unknown DSA families {bad} in strategy {strategy!r}: use '_'-joined names from {FAMILIES}.")
    return families


@dataclass
class AugParams:
    """One drawn transform: a family and per-sample magnitudes (identical rows when siamese)."""

    family: str
    values: dict[str, Tensor]


def sample(family: str, n: int, size: int, generator: torch.Generator, device: torch.device, siamese: bool = False) -> AugParams:
    """Draw magnitudes of ``family`` for ``n`` images of side ``size``.

    ``siamese``: one draw copied to every row (the official code copies sample 0's values), so
    the real and the synthetic batch, and every image in them, get one identical transform.
    """
    m = 1 if siamese else n

    def u(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=device)

    def randint(low: int, high: int) -> Tensor:  # inclusive low, exclusive high
        return torch.randint(low, high, (m,), generator=generator, device=device)

    if family == "color":
        values = {"brightness": u(m) - 0.5, "saturation": u(m) * 2.0, "contrast": u(m) + 0.5}
    elif family == "crop":
        s = int(size * CROP_RATIO + 0.5)
        values = {"tx": randint(-s, s + 1), "ty": randint(-s, s + 1)}
    elif family == "cutout":
        side = int(size * CUTOUT_RATIO + 0.5)
        high = size + (1 - side % 2)
        values = {"cx": randint(0, high), "cy": randint(0, high)}
    elif family == "flip":
        values = {"flip": u(m) < 0.5}
    elif family == "scale":
        values = {"sx": u(m) * (SCALE - 1.0 / SCALE) + 1.0 / SCALE, "sy": u(m) * (SCALE - 1.0 / SCALE) + 1.0 / SCALE}
    elif family == "rotate":
        values = {"angle": (u(m) - 0.5) * 2.0 * ROTATE_DEG * math.pi / 180.0}
    else:
        raise ValueError(f"unknown DSA family {family!r}: use one of {FAMILIES}.")
    if siamese:
        values = {k: v.expand(n) for k, v in values.items()}
    return AugParams(family, values)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _shift(x: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """Integer translation with zero fill: out[i, :, h, w] = x[i, :, h - ty_i, w - tx_i]."""
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1) - ty.view(n, 1, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) - tx.view(n, 1, 1)
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1).to(x.dtype)
    index = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    return torch.gather(x.reshape(n, c, h * w), 2, index).view(n, c, h, w) * inside


def apply(x: Tensor, params: AugParams) -> Tensor:
    """Apply a drawn transform to a batch ``x`` (N, C, H, W), differentiably."""
    v, n = params.values, x.shape[0]
    if params.family == "color":
        x = x + v["brightness"].view(n, 1, 1, 1)
        mean = x.mean(dim=1, keepdim=True)  # per pixel over channels: a no-op for one channel
        x = (x - mean) * v["saturation"].view(n, 1, 1, 1) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * v["contrast"].view(n, 1, 1, 1) + mean
    if params.family == "crop":
        return _shift(x, v["tx"], v["ty"])
    if params.family == "cutout":
        h, w = x.shape[2:]
        side = int(h * CUTOUT_RATIO + 0.5)
        rows = torch.arange(h, device=x.device).view(1, h, 1) - (v["cy"].view(n, 1, 1) - side // 2)
        cols = torch.arange(w, device=x.device).view(1, 1, w) - (v["cx"].view(n, 1, 1) - side // 2)
        hole = (rows >= 0) & (rows < side) & (cols >= 0) & (cols < side)
        return x * (~hole).unsqueeze(1).to(x.dtype)
    if params.family == "flip":
        return torch.where(v["flip"].view(n, 1, 1, 1), x.flip(3), x)
    if params.family == "scale":
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = v["sx"]
        theta[:, 1, 1] = v["sy"]
        return _affine(x, theta)
    if params.family == "rotate":
        a = v["angle"].to(x.dtype)
        theta = torch.stack([torch.stack([a.cos(), a.sin(), torch.zeros_like(a)], 1),
                             torch.stack([-a.sin(), a.cos(), torch.zeros_like(a)], 1)], 1)
        return _affine(x, theta)
    raise ValueError(f"unknown DSA family {params.family!r}")


def apply_grouped(batches: Sequence[Tensor], params: Sequence[AugParams]) -> list[Tensor]:
    """``[apply(batches[i], params[i]) for i ...]`` with one :func:`apply` call per family: the
    batches that drew the same family are concatenated (every transform acts per sample, so the
    grouping changes nothing but the number of kernels)."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(p.family, []).append(i)
    out: list[Tensor] = [batches[0]] * len(batches)
    for family, idx in groups.items():
        values = {name: torch.cat([params[i].values[name] for i in idx]) for name in params[idx[0]].values}
        joined = apply(torch.cat([batches[i] for i in idx]), AugParams(family, values))
        for i, part in zip(idx, joined.split([len(batches[i]) for i in idx])):
            out[i] = part
    return out


class DSA:
    """DSA for one strategy: one family per call (uniform), then magnitudes.

    ``seed`` seeds a CPU generator for the family draw and a device generator for magnitudes.
    """

    def __init__(self, strategy: str, seed: int, device: torch.device | str):
        self.families = parse_strategy(strategy)
        self.device = torch.device(device)
        self.family_gen = torch.Generator().manual_seed(seed)
        self.value_gen = torch.Generator(self.device).manual_seed(seed)

    def draw(self, n: int, size: int, siamese: bool = False) -> AugParams:
        family = self.families[int(torch.randint(len(self.families), (1,), generator=self.family_gen))]
        return sample(family, n, size, self.value_gen, self.device, siamese)

    def __call__(self, x: Tensor, siamese: bool = False) -> Tensor:
        """Per-sample (default) or siamese augmentation of ``x``."""
        return apply(x, self.draw(x.shape[0], x.shape[-1], siamese))


class DCAugment:
    """DC's MNIST evaluation augmentation (§3): per image one of crop, scale, rotate.

    crop: 4-pixel zero pad and a random crop (shift in [-4, 3]); scale: factor U(0.8, 1.2),
    nearest neighbour; rotate: integer angle in [-45, 45), filled with the per-channel batch mean.
    A GPU re-implementation with the official distributions (the original is per image on CPU).
    """

    def __init__(self, seed: int, device: torch.device | str):
        self.device = torch.device(device)
        self.gen = torch.Generator(self.device).manual_seed(seed)

    def __call__(self, x: Tensor) -> Tensor:
        n, dev, g = x.shape[0], x.device, self.gen
        choice = torch.randint(0, 3, (n,), generator=g, device=dev).view(n, 1, 1, 1)
        cropped = _shift(x, torch.randint(-4, 4, (n,), generator=g, device=dev), torch.randint(-4, 4, (n,), generator=g, device=dev))
        s = torch.rand(n, generator=g, device=dev) * 0.4 + 0.8
        theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
        theta[:, 0, 0] = 1.0 / s
        theta[:, 1, 1] = 1.0 / s
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        scaled = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=True)
        a = torch.randint(-45, 45, (n,), generator=g, device=dev).to(x.dtype) * math.pi / 180.0
        zero = torch.zeros_like(a)
        theta = torch.stack([torch.stack([a.cos(), a.sin(), zero], 1), torch.stack([-a.sin(), a.cos(), zero], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        rotated = F.grid_sample(x - mean, grid, mode="bilinear", padding_mode="zeros", align_corners=True) + mean
        return torch.where(choice == 0, cropped, torch.where(choice == 1, scaled, rotated))
