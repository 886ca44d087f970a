"""Differentiable Siamese Augmentation (DSA), DC's MNIST augmentation and the CIFAR student
protocol's padded crop and mixup (docs/labels.md §3), on the device.

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

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ddbench.contracts.recipe import FAMILIES, parse_strategy

SCALE = 1.2  # sx, sy ~ U(1/1.2, 1.2)
ROTATE_DEG = 15.0  # angle ~ U(-15, 15) degrees
CROP_RATIO = 0.125  # shift s = int(0.125 H + 0.5)
CUTOUT_RATIO = 0.5  # side = int(0.5 H + 0.5)


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


DC_FAMILIES = ("crop", "scale", "rotate")  # the official get_daparam's MNIST strategy, crop_scale_rotate
DC_CROP = 4  # crop: 4 pixels of padding, so a shift uniform on -4..3 along each axis
DC_SCALE = 0.2  # scale: height and width factors U(0.8, 1.2), independent
DC_ROTATE = 45  # rotate: an integer angle uniform on -45..44 degrees


@functools.cache
def spline_prefilter(n: int, device: torch.device) -> Tensor:
    """The (n, n) float64 matrix taking n samples to the coefficients of the cubic B-spline through
    them with mirror boundaries (the prefilter ``scipy.ndimage.rotate`` applies, ``spline_filter``
    of order 3): the inverse of the spline's sampling matrix, whose row i is (c[i-1] + 4 c[i] +
    c[i+1]) / 6 with c[-1] = c[1] and c[n] = c[n-2]."""
    ones = torch.ones(n - 1, dtype=torch.float64)
    sample = torch.diag(torch.full((n,), 4.0, dtype=torch.float64)) + torch.diag(ones, 1) + torch.diag(ones, -1)
    sample[0, 1] = sample[n - 1, n - 2] = 2.0
    return torch.linalg.inv(sample / 6.0).to(device)


def _cubic_weights(t: Tensor) -> Tensor:
    """Weights (N, 4, M) of the cubic B-spline at the samples floor(p) - 1 .. floor(p) + 2 of points p
    whose fractional parts are ``t`` (N, M)."""
    s = 1 - t
    t2, s2 = t * t, s * s
    return torch.stack([s2 * s / 6, 2 / 3 - t2 + t2 * t / 2, 2 / 3 - s2 + s2 * s / 2, t2 * t / 6], 1)


def dc_rotate(x: Tensor, degrees: Tensor, fill: Tensor) -> Tensor:
    """Each image of ``x`` (N, C, H, W) rotated by ``degrees`` (N,) as the official DC-augment rotates:
    ``scipy.ndimage.rotate`` with its defaults (the cubic B-spline through the image with mirror
    boundaries, on an output plane enlarged to hold the whole rotated image, ``fill`` where a point
    falls outside the input), then the plane's centre H x W at offset int((side - H) / 2).
    Coordinates in float64, the interpolation in x's dtype."""
    n, c, h, w = x.shape
    dev, f64 = x.device, torch.float64
    coeffs = (spline_prefilter(h, dev) @ x.to(f64) @ spline_prefilter(w, dev).T).to(x.dtype)
    coeffs = F.pad(coeffs, (1, 2, 1, 2), mode="reflect").reshape(n, c, -1)  # every tap of an inside point, mirrored
    rad = torch.deg2rad(degrees.to(f64)).view(n, 1, 1)
    cos, sin = rad.cos(), rad.sin()  # input point = [[cos, sin], [-sin, cos]] @ output point + offset
    zero = torch.zeros_like(cos)
    corners_u = torch.cat([zero, sin * w, cos * h, cos * h + sin * w], -1)  # the image corners, rotated
    corners_v = torch.cat([zero, cos * w, -sin * h, cos * w - sin * h], -1)
    side_u = (corners_u.amax(-1, keepdim=True) - corners_u.amin(-1, keepdim=True) + 0.5).floor()  # the enlarged plane
    side_v = (corners_v.amax(-1, keepdim=True) - corners_v.amin(-1, keepdim=True) + 0.5).floor()
    mid_u, mid_v = (side_u - 1) / 2, (side_v - 1) / 2
    offset_u, offset_v = (h - 1) / 2 - (cos * mid_u + sin * mid_v), (w - 1) / 2 - (cos * mid_v - sin * mid_u)
    rows = torch.arange(h, dtype=f64, device=dev).view(1, h, 1) + ((side_u - h) / 2).floor()  # the official centre crop
    cols = torch.arange(w, dtype=f64, device=dev).view(1, 1, w) + ((side_v - w) / 2).floor()
    u = cos * rows + sin * cols + offset_u
    v = cos * cols - sin * rows + offset_v
    inside = ((u >= 0) & (u <= h - 1) & (v >= 0) & (v <= w - 1)).view(n, 1, h, w)
    u, v = u.clamp(0, h - 1).view(n, h * w), v.clamp(0, w - 1).view(n, h * w)
    u0, v0 = u.floor(), v.floor()
    taps = (torch.arange(4, device=dev).view(4, 1) * (w + 3) + torch.arange(4, device=dev)).view(1, 16, 1)
    index = ((u0 * (w + 3) + v0).long().unsqueeze(1) + taps).view(n, 1, -1).expand(n, c, -1)
    values = torch.gather(coeffs, 2, index).view(n, c, 16, h * w)
    weights = _cubic_weights((u - u0).to(x.dtype)).unsqueeze(2) * _cubic_weights((v - v0).to(x.dtype)).unsqueeze(1)
    out = (values * weights.view(n, 1, 16, h * w)).sum(2).view(n, c, h, w)
    return torch.where(inside, out, fill.to(x.dtype))


def dc_scale(x: Tensor, heights: Tensor, widths: Tensor) -> Tensor:
    """Each image of ``x`` (N, C, H, W) scaled to ``heights`` x ``widths`` (N,) as the official
    DC-augment scales: resized by ``F.interpolate``'s default nearest neighbour (source index
    floor(i * float32(H / h))), centred on a zero canvas of side max(h, w, H, W) and cut back to
    the canvas's centre H x W (each centring at offset int((side - size) / 2))."""
    n, c, h, w = x.shape
    side = torch.maximum(heights, widths).clamp(min=max(h, w)).unsqueeze(1)

    def source(size: int, new: Tensor) -> tuple[Tensor, Tensor]:  # (N, size): source line of each output line, whether it has one
        at = torch.arange(size, device=x.device) + (side - size) // 2 - (side - new.unsqueeze(1)) // 2
        index = (at.float() * (size / new.float()).unsqueeze(1)).floor().long().clamp(0, size - 1)
        return index, (at >= 0) & (at < new.unsqueeze(1))

    rows, row_kept = source(h, heights)
    cols, col_kept = source(w, widths)
    index = (rows.unsqueeze(2) * w + cols.unsqueeze(1)).view(n, 1, h * w).expand(n, c, h * w)
    kept = (row_kept.unsqueeze(2) & col_kept.unsqueeze(1)).unsqueeze(1)
    return torch.where(kept, torch.gather(x.reshape(n, c, h * w), 2, index).view(n, c, h, w), 0.0)


class DCAugment:
    """DC's evaluation augmentation on MNIST (§3): the official ``augment`` with ``get_daparam``'s
    MNIST setting, per image one of ``families`` drawn uniformly:

    - crop: the image padded by 4 pixels of the batch's per-channel mean and cut at a corner
      uniform on 0..7 along each axis;
    - scale: to height int(f_h H) and width int(f_w H), f_h and f_w ~ U(0.8, 1.2) independent
      (the official code multiplies both by H), :func:`dc_scale` (zero canvas);
    - rotate: by an integer angle uniform on -45..44 degrees, :func:`dc_rotate`, filled with the
      mean of the per-channel batch means.

    The batch means are taken before any image changes, as officially. Every draw is made for all
    images at once from one generator on the device. ``dense`` (the default off the CPU): every
    family is computed for every image and selected per image (no host sync); otherwise only for
    the images that drew it.
    """

    def __init__(self, seed: int, device: torch.device | str, families: tuple[str, ...] = DC_FAMILIES):
        bad = [f for f in families if f not in DC_FAMILIES]
        if bad or not families:
            raise ValueError(f"unknown DC-augment families {bad}: use some of {DC_FAMILIES}.")
        self.families = families
        self.device = torch.device(device)
        self.gen = torch.Generator(self.device).manual_seed(seed)
        self.dense = self.device.type != "cpu"

    def __call__(self, x: Tensor) -> Tensor:
        n, dev, g = x.shape[0], x.device, self.gen
        choice = torch.randint(0, len(self.families), (n,), generator=g, device=dev)
        shifts = torch.randint(0, 2 * DC_CROP, (n, 2), generator=g, device=dev) - DC_CROP  # rows, then columns
        sizes = (torch.rand(n, 2, generator=g, device=dev, dtype=torch.float64) * (2 * DC_SCALE) + (1 - DC_SCALE)) * x.shape[2]
        degrees = torch.randint(-DC_ROTATE, DC_ROTATE, (n,), generator=g, device=dev)
        mean = x.mean(dim=(0, 2, 3))
        make: dict[str, Callable[[Tensor | slice], Tensor]] = {
            "crop": lambda i: shift(x[i], shifts[i, 0], shifts[i, 1], mean),
            "scale": lambda i: dc_scale(x[i], sizes[i, 0].long(), sizes[i, 1].long()),
            "rotate": lambda i: dc_rotate(x[i], degrees[i], mean.double().mean()),
        }
        out = x
        for k, family in enumerate(self.families):
            chosen = choice == k
            if self.dense:
                out = torch.where(chosen.view(n, 1, 1, 1), make[family](slice(None)), out)
            else:
                index = chosen.nonzero().squeeze(1)
                out = out.index_put((index,), make[family](index)) if len(index) else out
        return out


def crop_padding(side: int) -> int:
    """Pixels of padding of the ``crop`` augmentation: the CIFAR protocol's 4 at 32 pixels, scaled
    to the image side (at least 1: 1 on 8 x 8 digits, 4 on 28 x 28 MNIST) [ours off CIFAR]."""
    return max(1, round(4 * side / 32))


def fill_values(fill: tuple[float, ...], like: Tensor) -> Tensor:
    """A recipe's per-channel padding value (``crop_fill``) as a (C,) tensor for images ``like``
    (N, C, H, W): ``fill``, or zeros where it is empty."""
    return torch.tensor(fill, device=like.device, dtype=like.dtype) if fill else like.new_zeros(like.shape[1])


def shift(x: Tensor, dy: Tensor, dx: Tensor, fill: Tensor) -> Tensor:
    """Each image of ``x`` (N, C, H, W) moved by whole pixels: out[i, :, h, w] = x[i, :, h + dy_i, w + dx_i],
    with ``fill`` (C,) where that lies outside the image (a crop of a padded image at offset (dy, dx))."""
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1) + dy.view(n, 1, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) + dx.view(n, 1, 1)
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1)
    index = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    moved = torch.gather(x.reshape(n, c, h * w), 2, index).view(n, c, h, w)
    return torch.where(inside, moved, fill.to(x).view(1, c, 1, 1))


class PadCrop:
    """The CIFAR student protocol's augmentation per image (SRe2L's and DWA's ``RandomCrop(32,
    padding=4)`` and ``RandomHorizontalFlip``), on the device: a shift uniform on -p..p along each
    axis (p = :func:`crop_padding` of the side), the uncovered pixels set to ``fill``
    (the value of a black pixel, per channel: the padding is zeros before normalisation), then with
    ``flip`` a mirror with probability 1/2. Draws from its own generator."""

    def __init__(self, fill: tuple[float, ...], flip: bool, seed: int, device: torch.device | str):
        self.fill, self.flip = fill, flip
        self.gen = torch.Generator(torch.device(device)).manual_seed(seed)

    def __call__(self, x: Tensor) -> Tensor:
        n, g, pad = x.shape[0], self.gen, crop_padding(x.shape[-1])
        offsets = torch.randint(-pad, pad + 1, (n, 2), generator=g, device=x.device)
        out = shift(x, offsets[:, 0], offsets[:, 1], fill_values(self.fill, x))
        if not self.flip:
            return out
        mirror = torch.rand(n, generator=g, device=x.device) < 0.5
        return torch.where(mirror.view(n, 1, 1, 1), out.flip(-1), out)


class Mixup:
    """Mixup of a batch as the official CIFAR student code draws it: lambda ~ Beta(alpha, alpha) per
    batch, each image mixed with the image a random permutation puts in its place; the teacher then
    labels the mixed images. Lambda comes from a numpy generator (no device sync), the permutation
    from a torch generator on the device, both seeded with ``seed``."""

    def __init__(self, alpha: float, seed: int, device: torch.device | str):
        self.alpha = alpha
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator(torch.device(device)).manual_seed(seed)

    def __call__(self, x: Tensor) -> Tensor:
        lam = float(self.rng.beta(self.alpha, self.alpha))
        perm = torch.randperm(len(x), generator=self.gen, device=x.device)
        return lam * x + (1 - lam) * x[perm]


# -- stored views: a soft-label bank's crops (ddbench.budget.labels) ---------------------------------
CROP_SCALE = (0.08, 1.0)  # area fraction of a resized view's crop (RandomResizedCrop's default range: SRe2L's ImageNet relabel)


def padded_views(n: int, views: int, side: int, flip: bool, generator: torch.Generator) -> Tensor:
    """(n, views, 5) padded random crops of images of ``side`` pixels: shifts by whole pixels uniform on
    -p..p along each axis (p = :func:`~ddbench.ops.augment.crop_padding`), as torchvision's
    ``RandomCrop(side, padding=p)``, and a flip with probability 1/2 where ``flip``."""
    device, pad = generator.device, crop_padding(side)
    offsets = torch.randint(-pad, pad + 1, (n, views, 2), generator=generator, device=device).float() / side
    mirror = (torch.rand(n, views, generator=generator, device=device) < 0.5).float() * float(flip)
    ones = torch.ones(n, views, device=device)
    return torch.stack([offsets[..., 0], offsets[..., 1], ones, ones, mirror], -1)


def random_views(n: int, views: int, generator: torch.Generator, scale: tuple[float, float] = CROP_SCALE) -> Tensor:
    """(n, views, 5) random resized crops (area fraction in ``scale``, aspect ratio 3/4..4/3, inside the
    image) and flips, as torchvision's ``RandomResizedCrop`` and ``RandomHorizontalFlip``."""
    device = generator.device
    area = torch.empty(n, views, device=device).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n, views, device=device).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
    ratio = log_ratio.exp()
    h = (area / ratio).sqrt().clamp(max=1.0)
    w = (area * ratio).sqrt().clamp(max=1.0)
    top = torch.rand(n, views, generator=generator, device=device) * (1 - h)
    left = torch.rand(n, views, generator=generator, device=device) * (1 - w)
    flip = (torch.rand(n, views, generator=generator, device=device) < 0.5).float()
    return torch.stack([top, left, h, w, flip], -1)


def crop_views(x: Tensor, views: Tensor, fill: tuple[float, ...] = ()) -> Tensor:
    """Each image of ``x`` (B, C, H, W) cropped to its view (B, 5) and flipped where flagged: a
    whole-size view shifted by whole pixels, what it uncovers filled with ``fill`` per channel (a
    recipe's ``crop_fill``; default 0);
    a smaller view resized back to H x W (bilinear)."""
    top, left, h, w, flip = views.unbind(-1)
    theta = torch.zeros(len(x), 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = w
    theta[:, 0, 2] = 2 * left + w - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * top + h - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    resized = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    dy, dx = (top * x.shape[-2]).round().long(), (left * x.shape[-1]).round().long()
    shifted = shift(x, dy, dx, fill_values(fill, x))
    out = torch.where(((h == 1) & (w == 1)).view(-1, 1, 1, 1), shifted, resized)
    return torch.where(flip.bool().view(-1, 1, 1, 1), out.flip(-1), out)
