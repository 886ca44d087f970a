"""Step tests of the student recipe of the teacher regime against a transcription of the official
CIFAR code (SRe2L ``relabel_cifar.py``, DWA ``validation_cifar.py``; docs/labels.md §3): the padded
random crop and flip, and one training step with mixup relabelled by the teacher."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare
from torch import nn

from ddbench import Artifact, Recipe
from ddbench.contracts.recipe import KD_PROTOCOL, crop_protocol
from ddbench.ops.augment import PadCrop, crop_padding, crop_views, padded_views
from ddbench.ops.steps import draw_seed, shuffles
from ddbench.ops.training import train_classifier


def padded_crops(image: torch.Tensor, pad: int, fill: torch.Tensor) -> list[torch.Tensor]:
    """Every output of torchvision's RandomCrop(side, padding=pad) on ``image``: pad with ``fill``, crop at each corner."""
    c, h, w = image.shape
    padded = fill.view(c, 1, 1).expand(c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, pad : pad + h, pad : pad + w] = image
    return [padded[:, i : i + h, j : j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]


@pytest.mark.parametrize("side, flip", [(8, False), pytest.param(28, True, marks=pytest.mark.slow),
                                        pytest.param(32, True, marks=pytest.mark.slow)])
def test_the_padded_crop_draws_every_official_crop_uniformly(side, flip):
    pad, fill = crop_padding(side), torch.tensor([-0.4, -0.8])
    assert pad == {8: 1, 28: 4, 32: 4}[side]
    image = torch.randn(2, side, side, generator=torch.Generator().manual_seed(0))
    candidates = padded_crops(image, pad, fill)
    if flip:
        candidates += [c.flip(-1) for c in candidates]
    augment = PadCrop(tuple(fill.tolist()), flip, seed=1, device="cpu")
    draws = 4000
    out = augment(image.expand(draws, -1, -1, -1))
    hits = torch.stack([(out == c).flatten(1).all(1) for c in candidates], 1)
    assert bool((hits.sum(1) == 1).all())  # every output is exactly one of the official crops
    counts = hits.sum(0).numpy()
    assert chisquare(counts).pvalue > 1e-3  # all of them, uniformly


def test_a_banks_padded_views_are_the_same_crops():
    side, fill = 8, torch.tensor([-0.8])
    image = torch.randn(1, side, side, generator=torch.Generator().manual_seed(2))
    views = padded_views(300, 1, side, True, torch.Generator().manual_seed(3))[:, 0]
    out = crop_views(image.expand(300, -1, -1, -1), views, tuple(fill.tolist()))
    candidates = padded_crops(image, crop_padding(side), fill)
    candidates += [c.flip(-1) for c in candidates]
    assert all(any(torch.equal(o, c) for c in candidates) for o in out)


def test_the_task_states_the_official_protocol(digits, manager):
    task = manager.tasks.get("cifar10")()
    recipe = task.teacher_recipe("full")
    official = ("adamw", 1e-3, 0.01, "cosine", 30.0)
    assert (recipe.optimizer, recipe.lr, recipe.weight_decay, recipe.schedule, recipe.temperature) == official
    assert (recipe.batch_size, recipe.mixup, recipe.augment, recipe.epochs) == (128, 0.8, "crop_flip", 399)
    assert recipe.crop_fill == pytest.approx([-m / s for m, s in zip(task.mean, task.std)])  # a black pixel, normalised
    assert digits[0].teacher_recipe("quick").augment == "crop"  # digits are never flipped (docs/methods.md §1)
    assert (recipe.teacher_mode, recipe.kd_t2) == ("train", False)  # the official code's teacher and loss
    ours = manager.tasks.get("cifar10")(teacher_mode="eval", kd_t2=True).teacher_recipe("full")
    assert (ours.teacher_mode, ours.kd_t2) == ("eval", True)
    assert task.teacher_recipe("quick").batch_size == 16  # ours: enough steps in the quick epochs
    assert crop_protocol({"mean": [], "std": []}, (40,)) == {} and KD_PROTOCOL["batch_size"] == 128


class Teacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Linear(3 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


@pytest.mark.parametrize("mode, t2", [("eval", True), ("train", False)])
def test_one_student_step_mixes_the_batch_and_the_teacher_relabels_the_mixed_view(mode, t2):
    """One epoch of one batch: shuffle, mixup (lambda ~ Beta(0.8, 0.8) from numpy, a torch permutation),
    the teacher's prediction on the mixed images (eval mode, or BatchNorm on the batch as the
    official code leaves it), KL at T (x T^2 where asked), one AdamW step; the stored teacher is untouched."""
    torch.manual_seed(0)
    teacher = Teacher()
    teacher.bn.running_mean.uniform_(-1, 1)
    teacher.eval()
    before = copy.deepcopy(teacher.state_dict())
    x = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    student = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    reference = copy.deepcopy(student)
    recipe = Recipe(epochs=0, batch_size=6, optimizer="adamw", schedule="cosine", lr=1e-2, weight_decay=0.01, temperature=4.0,
                    mixup=0.8, teacher_mode=mode, kd_t2=t2)
    artifact = Artifact({"x": x}, {"teacher": "a"}, teacher=teacher)
    train_classifier(student, artifact, recipe, torch.Generator().manual_seed(7))

    g = torch.Generator().manual_seed(7)
    draw_seed(g)  # the augmentation's seed (none here)
    mix_seed = draw_seed(g)
    order = shuffles(g, 6, 1, torch.device("cpu"))[0]
    lam = float(np.random.default_rng(mix_seed).beta(0.8, 0.8))
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(mix_seed))
    batch = x[order]
    mixed = lam * batch + (1 - lam) * batch[perm]
    official_teacher = copy.deepcopy(teacher).train() if mode == "train" else teacher
    with torch.no_grad():
        soft = F.softmax(official_teacher(mixed) / 4.0, dim=1)
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.01)
    loss = nn.KLDivLoss(reduction="batchmean")(F.log_softmax(reference(mixed) / 4.0, dim=1), soft) * (16.0 if t2 else 1.0)
    loss.backward()
    opt.step()
    for a, b in zip(student.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items()) and not teacher.training
