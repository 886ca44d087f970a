"""Differentiable Siamese Augmentation (DSA) and DC's MNIST augmentation, on the device.

Faithful to ``docs/methods.md`` §4 (DSA) and §3 (DC-augment), vectorised as §13.1 asks: a drawn
DSA transform is a :class:`Transform`, per image an affine map (crop, flip, scale and rotate), a
colour change and a cutout square, each the identity unless the image's family is that one, so
a batch with any mix of families is augmented by the same dozen kernels and the draws of many
steps can be made at once (:meth:`DSA.plan`; §13.4: the family schedule drawn in advance, no host
sync). Everything is differentiable with respect to the input. All draws come from one generator
on the data's device, so a stored :class:`Transform` replays the exact same transform (needed by
MTT's exact gradient).
"""
from __future__ import annotations

import math
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
class Transform:
    """Drawn DSA transforms, one per image, with any leading shape (``(steps, batch)`` for a plan;
    index it like a tensor). Each image's family sets one stage; the others are the identity:

    - ``theta`` (..., 2, 3): the affine map of ``affine_grid`` (bilinear, zero fill,
      align_corners=True): crop is an integer translation, flip a mirror, scale diag(sx, sy),
      rotate a rotation;
    - ``color`` (..., 3): brightness shift, saturation factor, contrast factor (0, 1, 1: identity);
    - ``hole_rows`` (..., H) and ``hole_cols`` (..., W): cutout's square as row x column indicators;
    - ``stages`` (..., 3): whether the image's family is an affine one, color, or cutout.
    """

    theta: Tensor
    color: Tensor
    hole_rows: Tensor
    hole_cols: Tensor
    stages: Tensor

    def parts(self) -> tuple[Tensor, ...]:
        return self.theta, self.color, self.hole_rows, self.hole_cols, self.stages

    def __getitem__(self, index: int | slice | tuple[int | slice, ...]) -> Transform:
        return Transform(*(t[index] for t in self.parts()))

    def flatten(self) -> Transform:
        """The two leading dimensions merged: (A, B) -> (A * B,)."""
        return Transform(*(t.flatten(0, 1) for t in self.parts()))

    def repeat(self, count: int) -> Transform:
        """Every row ``count`` times (one siamese draw for a whole batch)."""
        return Transform(*(t.repeat_interleave(count, dim=0) for t in self.parts()))

    @staticmethod
    def stack(transforms: list[Transform], dim: int) -> Transform:
        return Transform(*(torch.stack(parts, dim) for parts in zip(*(t.parts() for t in transforms))))


def _integer(u: Tensor, low: int, high: int) -> Tensor:
    """Uniforms in [0, 1) to integers uniform on low..high-1 (as floats)."""
    return (u * (high - low)).floor().clamp(max=high - low - 1) + low


def transforms(codes: Tensor, u: Tensor, size: int) -> Transform:
    """The transforms of images of side ``size`` whose families are ``codes`` (indices into
    :data:`FAMILIES`, any shape) and whose magnitudes come from uniforms ``u`` (codes' shape + (3,)),
    with the distributions of §4:

    color: brightness u0 - 0.5, saturation 2 u1, contrast u2 + 0.5; crop: tx, ty uniform on
    -s..s; cutout: centre (cx, cy) uniform on 0..H (H - 1 for an odd side); flip: with probability
    0.5 (u0 < 0.5); scale: sx, sy ~ U(1/1.2, 1.2); rotate: angle ~ U(-15, 15) degrees.
    """
    crop, flip, scale, rotate, color, cutout = (codes == FAMILIES.index(f) for f in ("crop", "flip", "scale", "rotate", "color", "cutout"))
    u0, u1, u2 = u.unbind(-1)
    s = int(size * CROP_RATIO + 0.5)
    # out[h, w] = x[h - ty, w - tx]: the grid reads 2 t / (size - 1) to the left in normalised units
    tx = torch.where(crop, _integer(u0, -s, s + 1), 0.0) * (-2.0 / (size - 1))
    ty = torch.where(crop, _integer(u1, -s, s + 1), 0.0) * (-2.0 / (size - 1))
    sx = torch.where(scale, u0 * (SCALE - 1.0 / SCALE) + 1.0 / SCALE, 1.0)
    sx = torch.where(flip & (u0 < 0.5), -1.0, sx)
    sy = torch.where(scale, u1 * (SCALE - 1.0 / SCALE) + 1.0 / SCALE, 1.0)
    angle = torch.where(rotate, (u0 - 0.5) * (2.0 * ROTATE_DEG * math.pi / 180.0), 0.0)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([sx * cos, sin, tx, -sin, sy * cos, ty], -1).unflatten(-1, (2, 3))

    shades = torch.stack([torch.where(color, u0 - 0.5, 0.0), torch.where(color, u1 * 2.0, 1.0),
                          torch.where(color, u2 + 0.5, 1.0)], -1)

    side = int(size * CUTOUT_RATIO + 0.5)
    high = size + (1 - side % 2)
    pixels = torch.arange(size, device=u.device, dtype=u.dtype)

    def hole(centre: Tensor) -> Tensor:  # pixels in [centre - side // 2, centre - side // 2 + side)
        offset = pixels - (_integer(centre, 0, high) - side // 2).unsqueeze(-1)
        return ((offset >= 0) & (offset < side) & cutout.unsqueeze(-1)).to(u.dtype)

    stages = torch.stack([crop | flip | scale | rotate, color, cutout], -1)
    return Transform(theta, shades, hole(u1), hole(u0), stages)


def apply(x: Tensor, transform: Transform) -> Tensor:
    """Augment images ``x`` (N, C, H, W) with one transform per image (a ``Transform`` of leading shape (N,)).

    On a GPU every stage runs (no host sync); on the CPU, where looking costs nothing, a stage that
    is the identity for the whole batch is skipped (the result differs only by rounding)."""
    n, dtype = x.shape[0], x.dtype
    affine, color, cutout = transform.stages.any(0).tolist() if x.device.type == "cpu" else (True, True, True)
    if affine:
        grid = F.affine_grid(transform.theta.to(dtype), list(x.shape), align_corners=True)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    if color:
        brightness, saturation, contrast = transform.color.to(dtype).reshape(n, 3, 1, 1, 1).unbind(1)
        x = x + brightness
        mean = x.mean(dim=1, keepdim=True)  # per pixel over channels: a no-op for one channel
        x = torch.addcmul(mean, x - mean, saturation)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = torch.addcmul(mean, x - mean, contrast)
    if cutout:
        x = x - x * (transform.hole_rows[:, None, :, None] * transform.hole_cols[:, None, None, :]).to(dtype)
    return x


class DSA:
    """DSA for one strategy and seed: per batch one family drawn uniformly from the strategy, then
    per-image magnitudes (§4, mode S), all from one generator on ``device``."""

    def __init__(self, strategy: str, seed: int, device: torch.device | str):
        self.families = parse_strategy(strategy)
        self.device = torch.device(device)
        self.codes = torch.tensor([FAMILIES.index(f) for f in self.families], device=self.device)
        self.generator = torch.Generator(self.device).manual_seed(seed)

    def plan(self, steps: int, batch: int, size: int) -> Transform:
        """Transforms for ``steps`` batches of ``batch`` images of side ``size``, drawn at once:
        shape (steps, batch); ``plan[t, :n]`` augments a step's batch of n images. A plan with
        ``batch=1`` is one siamese draw per step (repeat it over the images that share it)."""
        pick = torch.rand(steps, generator=self.generator, device=self.device)
        step_codes = self.codes[(pick * len(self.families)).long().clamp(max=len(self.families) - 1)]
        u = torch.rand(steps, batch, 3, generator=self.generator, device=self.device)
        return transforms(step_codes.unsqueeze(1).expand(steps, batch), u, size)


def _shift(x: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """Integer translation with zero fill: out[i, :, h, w] = x[i, :, h - ty_i, w - tx_i]."""
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1) - ty.view(n, 1, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) - tx.view(n, 1, 1)
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1).to(x.dtype)
    index = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    return torch.gather(x.reshape(n, c, h * w), 2, index).view(n, c, h, w) * inside


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
