"""DC-augment (docs/methods.md §3) against a transcription, written here, of the official per-image
``augment`` with ``get_daparam``'s MNIST setting (VICO-UoE/DatasetCondensation ``utils.py``):
equal for fixed draws, and the same distributions for random ones (two-sample KS tests)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage, stats

from ddbench.ops.augment import DC_FAMILIES, DCAugment, dc_rotate, dc_scale, shift, spline_prefilter


# -- the official transform of one (C, H, W) image, by family -------------------------------------
def official_crop(image: np.ndarray, mean: list[float], row: int, col: int) -> np.ndarray:
    """Padded by 4 pixels of each channel's batch mean, cut at corner (row, col) in 0..7."""
    c, h, w = image.shape
    padded = np.empty((c, h + 8, w + 8), np.float32)
    padded[:] = np.asarray(mean, np.float32)[:, None, None]
    padded[:, 4 : 4 + h, 4 : 4 + w] = image
    return padded[:, row : row + h, col : col + w]


def official_scale(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest resize to (height, width) by ``F.interpolate``, centred on a zero canvas, centre cut."""
    c, h, w = image.shape
    resized = F.interpolate(torch.from_numpy(image)[None], [height, width])[0].numpy()
    side = max(height, width, h, w)
    canvas = np.zeros((c, side, side), np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[:, top : top + height, left : left + width] = resized
    top, left = (side - h) // 2, (side - w) // 2
    return canvas[:, top : top + h, left : left + w]


def official_rotate(image: np.ndarray, degrees: int, fill: float) -> np.ndarray:
    """``scipy.ndimage.rotate`` with its defaults (order 3, reshape), then the centre cut."""
    rotated = ndimage.rotate(image, angle=degrees, axes=(-2, -1), cval=fill)
    top, left = (rotated.shape[-2] - image.shape[-2]) // 2, (rotated.shape[-1] - image.shape[-1]) // 2
    return rotated[:, top : top + image.shape[-2], left : left + image.shape[-1]]


def official_augment(images: np.ndarray, families: tuple[str, ...], rng: np.random.Generator) -> np.ndarray:
    """The official loop: batch means first, then per image a family uniformly and its own draws."""
    n, c, h, _ = images.shape
    mean = [float(images[:, k].mean()) for k in range(c)]
    out = images.copy()
    for i in range(n):
        family = families[rng.integers(len(families))]
        if family == "crop":
            row, col = int(rng.integers(8)), int(rng.integers(8))
            out[i] = official_crop(images[i], mean, row, col)
        elif family == "scale":
            height, width = int(rng.uniform(0.8, 1.2) * h), int(rng.uniform(0.8, 1.2) * h)
            out[i] = official_scale(images[i], height, width)
        else:
            out[i] = official_rotate(images[i], int(rng.integers(-45, 45)), float(np.mean(mean)))
    return out


# -- exact for fixed draws ------------------------------------------------------------------------
def test_the_prefilter_is_scipys_mirror_spline_filter():
    rng = np.random.default_rng(0)
    for n in (2, 8, 28):
        x = rng.normal(size=(n, 3))
        ours = spline_prefilter(n, torch.device("cpu")).numpy() @ x
        np.testing.assert_allclose(ours, ndimage.spline_filter1d(x, 3, axis=0, mode="mirror"), atol=1e-12)


@pytest.mark.parametrize("side", [28, 9])
def test_rotation_is_scipys_cubic_spline_rotate_at_every_angle(side):
    torch.manual_seed(0)
    angles = torch.arange(-45, 45)
    x = torch.randn(len(angles), 3, side, side) + 1.0
    ours = dc_rotate(x, angles, torch.tensor(0.37)).numpy()
    for i, angle in enumerate(angles.tolist()):  # every pixel, the border included
        np.testing.assert_allclose(ours[i], official_rotate(x[i].numpy(), angle, 0.37), atol=1e-5, err_msg=f"{angle} degrees")


def test_scale_is_the_official_nearest_resize_for_every_size():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 28, 28)
    sizes = torch.tensor([(h, w) for h in range(22, 34) for w in range(22, 34)])  # int(f * 28), f in [0.8, 1.2)
    ours = dc_scale(x.expand(len(sizes), -1, -1, -1), sizes[:, 0], sizes[:, 1]).numpy()
    for i, (h, w) in enumerate(sizes.tolist()):
        np.testing.assert_array_equal(ours[i], official_scale(x[0].numpy(), h, w), err_msg=f"{h} x {w}")


def test_crop_pads_with_the_channel_means_at_every_corner():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 10, 10)
    mean = [0.5, -2.0]
    corners = torch.tensor([(r, c) for r in range(8) for c in range(8)])
    ours = shift(x.expand(len(corners), -1, -1, -1), corners[:, 0] - 4, corners[:, 1] - 4, torch.tensor(mean)).numpy()
    for i, (r, c) in enumerate(corners.tolist()):
        np.testing.assert_array_equal(ours[i], official_crop(x[0].numpy(), mean, r, c))


def test_dense_path_equals_the_per_family_path_and_families_are_checked():
    x = torch.randn(64, 1, 28, 28)
    sparse, dense = DCAugment(3, "cpu"), DCAugment(3, "cpu")
    dense.dense = True
    np.testing.assert_allclose(dense(x).numpy(), sparse(x).numpy(), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="unknown DC-augment families"):
        DCAugment(0, "cpu", ("crop", "noise"))


# -- the same distributions for random draws ------------------------------------------------------
REPEATS = 256  # of a batch of 4 fixed images: 1,024 augmented images on each side
STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {  # per augmented image (N, 1, H, W) -> (N,)
    "corner pixel": lambda a: a[:, 0, 0, 0],
    "centre pixel": lambda a: a[:, 0, 14, 13],
    "pixel (3, 20)": lambda a: a[:, 0, 3, 20],
    "mean": lambda a: a.mean((1, 2, 3)),
    "std": lambda a: a.std((1, 2, 3)),
    # zero rows minus zero columns: only the scale's zero canvas makes exact zeros here
    "zero rows - zero columns": lambda a: (a == 0).all(3).sum((1, 2)) - (a == 0).all(2).sum((1, 2)),
}


@pytest.mark.parametrize("families", [("crop",), ("scale",), ("rotate",), DC_FAMILIES], ids="_".join)
def test_augmentation_has_the_official_distributions(families):
    """Fixed noise images with mean 1 (so the mean fill and the zero canvas differ; interpolation
    changes their spread); one statistic per augmented image, so the samples are independent."""
    images = np.random.default_rng(0).normal(1.0, 1.0, (4, 1, 28, 28)).astype(np.float32)
    rng = np.random.default_rng(1)
    official = np.concatenate([official_augment(images, families, rng) for _ in range(REPEATS)])
    augment, batch = DCAugment(2, "cpu", families), torch.from_numpy(images).repeat(64, 1, 1, 1)  # batches of 256
    ours = torch.cat([augment(batch) for _ in range(REPEATS // 64)]).numpy()
    for name, statistic in STATISTICS.items():  # rounded: a fill value differs in its last bits
        p = stats.ks_2samp(statistic(ours).round(4), statistic(official).round(4), method="asymp").pvalue
        assert p > 1e-4, f"{'_'.join(families)}: {name} differs from the official code's (KS p = {p:.2g})"
