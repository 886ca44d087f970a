"""DSA (docs/methods.md §4) as vectorised transforms: each family's effect against a direct
reference, mixed batches, the parameter ranges, and plans of many steps drawn at once."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ddbench.contracts.recipe import FAMILIES
from ddbench.ops.augment import DSA, apply, transforms

SIZE = 16
S = int(SIZE * 0.125 + 0.5)  # crop shift bound: 2
SIDE = int(SIZE * 0.5 + 0.5)  # cutout side: 8 (even: centres 0..16)


def reference(x: torch.Tensor, family: str, u: torch.Tensor) -> torch.Tensor:
    """One image's transform written out from the spec's table, image by image."""
    u0, u1, u2 = u.tolist()
    if family == "color":
        x = x + (u0 - 0.5)
        x = (x - x.mean(0, keepdim=True)) * (2 * u1) + x.mean(0, keepdim=True)
        return (x - x.mean()) * (u2 + 0.5) + x.mean()
    if family == "crop":  # out[h, w] = x[h - ty, w - tx], zero fill
        tx, ty = min(int(u0 * (2 * S + 1)), 2 * S) - S, min(int(u1 * (2 * S + 1)), 2 * S) - S
        padded = F.pad(x, (S, S, S, S))
        return padded[:, S - ty : S - ty + SIZE, S - tx : S - tx + SIZE]
    if family == "cutout":
        cx, cy = min(int(u0 * (SIZE + 1)), SIZE) - SIDE // 2, min(int(u1 * (SIZE + 1)), SIZE) - SIDE // 2
        out = x.clone()
        out[:, max(cy, 0) : max(cy + SIDE, 0), max(cx, 0) : max(cx + SIDE, 0)] = 0
        return out
    if family == "flip":
        return x.flip(2) if u0 < 0.5 else x
    if family == "scale":
        theta = torch.tensor([[u0 * (1.2 - 1 / 1.2) + 1 / 1.2, 0, 0], [0, u1 * (1.2 - 1 / 1.2) + 1 / 1.2, 0]])
    else:
        a = (u0 - 0.5) * 2 * math.radians(15)
        theta = torch.tensor([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0]])
    grid = F.affine_grid(theta[None], [1, *x.shape], align_corners=True)
    return F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]


def test_a_mixed_batch_gives_each_image_its_own_familys_transform():
    g = torch.Generator().manual_seed(0)
    codes = torch.arange(len(FAMILIES)).repeat(8)  # every family, 8 images each
    u = torch.rand(len(codes), 3, generator=g)
    x = torch.randn(len(codes), 3, SIZE, SIZE, generator=g)
    drawn = transforms(codes, u, SIZE)
    out = apply(x, drawn)  # every stage runs, as always on a GPU
    for i, code in enumerate(codes.tolist()):
        torch.testing.assert_close(out[i], reference(x[i], FAMILIES[code], u[i]), rtol=0, atol=2e-5,
                                   msg=lambda m, i=i, code=code: f"image {i} ({FAMILIES[code]}): {m}")
    for code in range(len(FAMILIES)):  # one family alone: on the CPU the identity stages are skipped
        rows = codes == code
        torch.testing.assert_close(apply(x[rows], drawn[rows]), out[rows], rtol=0, atol=2e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_transforms_are_differentiable(family):
    x = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = apply(x, transforms(torch.full((5,), FAMILIES.index(family)), torch.rand(5, 3), SIZE))
    (grad,) = torch.autograd.grad((out * torch.randn(out.shape)).sum(), x)
    assert out.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_integer_parameters_cover_exactly_their_range():
    edges = torch.tensor([[0.0] * 3, [1.0 - 2**-24] * 3])  # the smallest and largest float32 uniforms
    u = torch.cat([torch.rand(20000, 3, generator=torch.Generator().manual_seed(1)), edges])
    crop = transforms(torch.full((len(u),), FAMILIES.index("crop")), u, 32)
    shifts = (-crop.theta[:, 0, 2] * 31 / 2).round().long()
    assert set(shifts.tolist()) == set(range(-4, 5))  # s = int(0.125 * 32 + 0.5) = 4
    counts = torch.bincount(shifts + 4).float()
    assert (counts / counts.mean() - 1).abs().max() < 0.1  # uniform over the 9 shifts
    cutout = transforms(torch.full((len(u),), FAMILIES.index("cutout")), u, 28)  # side 14 (even): centres 0..28
    first, size = cutout.hole_cols.argmax(1), cutout.hole_cols.sum(1)
    centres = torch.where(first > 0, first + 7, size.long() - 7)  # a clipped hole is measured from its far edge
    assert set(centres.tolist()) == set(range(29))


def test_continuous_parameters_follow_the_spec_ranges():
    u = torch.rand(5000, 3, generator=torch.Generator().manual_seed(2))

    def of(family):
        return transforms(torch.full((len(u),), FAMILIES.index(family)), u, 32)

    assert 0.45 < (of("flip").theta[:, 0, 0] < 0).float().mean() < 0.55
    scale = of("scale").theta
    assert scale[:, 0, 0].min() >= 1 / 1.2 - 1e-6 and scale[:, 1, 1].max() <= 1.2 + 1e-6
    assert of("rotate").theta[:, 0, 1].abs().max() <= math.sin(math.radians(15)) + 1e-6
    color = of("color").color
    assert color[:, 0].abs().max() <= 0.5 and color[:, 1].max() <= 2.0 and color[:, 2].min() >= 0.5
    identity = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    assert torch.equal(of("color").theta, identity.expand(len(u), 2, 3)) and not of("crop").hole_rows.any()


def test_a_plan_draws_one_family_per_step_uniformly_and_replays_exactly():
    plan = DSA("color_crop_cutout_flip_scale_rotate", 3, "cpu").plan(600, 8, SIZE)
    assert plan.theta.shape == (600, 8, 2, 3) and plan.hole_rows.shape == (600, 8, SIZE)
    coloured = (plan.color != torch.tensor([0.0, 1.0, 1.0])).any(-1)  # (steps, batch)
    assert torch.equal(coloured.any(1), coloured.all(1))  # a family per step, not per image
    assert 70 < int(coloured[:, 0].sum()) < 130  # color on about 1/6 of 600 steps
    again = DSA("color_crop_cutout_flip_scale_rotate", 3, "cpu").plan(600, 8, SIZE)
    assert torch.equal(again.theta, plan.theta) and torch.equal(again.color, plan.color)  # seeded
    flips = DSA("flip", 0, "cpu").plan(50, 8, SIZE)
    assert set(flips.theta[..., 0, 0].unique().tolist()) == {-1.0, 1.0} and not flips.hole_rows.any()


