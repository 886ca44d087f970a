"""Step tests of SRe2L and DWA against transcriptions of their official CIFAR code (docs/methods.md §14):
the weighted BatchNorm loss, one recovery step, the jitter, DWA's perturbation and the batches."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddbench import Budget, RunContext
from ddbench.plugins import instantiate
from ddbench_sre import distillers
from ddbench_sre.recover import BatchNormStatistics, RecoverRecipe, directed_perturbation, recover, roll_jitter


def tiny_teacher() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                          nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model.eval()


def official_bn_loss(model: nn.Module, x: torch.Tensor, r_var: float, first_bn: float) -> torch.Tensor:
    """The official ``BNFeatureHook`` sum: per BatchNorm2d input, r_var * ||var - running_var|| + ||mean - running_mean||
    (biased variance over N, H, W), the first layer's term times ``first_bn``."""
    terms = []

    def hook(module, inputs, output):
        a = inputs[0]
        nch = a.shape[1]
        mean = a.mean([0, 2, 3])
        var = a.permute(1, 0, 2, 3).reshape(nch, -1).var(1, unbiased=False)
        terms.append(torch.norm(module.running_var - var, 2) * r_var + torch.norm(module.running_mean - mean, 2))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    model(x)
    for h in handles:
        h.remove()
    rescale = [first_bn] + [1.0] * (len(terms) - 1)
    return torch.stack([t * r for t, r in zip(terms, rescale)]).sum()


@pytest.mark.parametrize("r_var, first_bn", [(1.0, 10.0), (11.0, 10.0), (2.0, 1.0)])
def test_the_batchnorm_loss_weighs_variance_and_the_first_layer_as_the_official_hook(r_var, first_bn):
    model, x = tiny_teacher(), torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    stats = BatchNormStatistics(model, r_var, first_bn)
    model(x)
    ours = stats.loss().detach()
    stats.remove()
    assert float(ours) == pytest.approx(float(official_bn_loss(model, x, r_var, first_bn).detach()), rel=1e-6)


def test_the_jitter_rolls_by_zero_to_jitter_pixels_on_each_axis():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(400):
        out = roll_jitter(x, 2, g)
        rows, cols = next((r, c) for r in range(8) for c in range(8) if torch.equal(torch.roll(x, (r, c), (-2, -1)), out))
        seen.add((rows, cols))
    assert seen == {(r, c) for r in range(3) for c in range(3)}  # random.randint(0, 2) twice: non-negative, inclusive


def test_one_recovery_step_is_the_official_step():
    """Step 1: roll by the drawn offsets, CE + r_bn * weighted BN loss, Adam (lr at the cosine's start, betas 0.5/0.9), clip."""
    model, recipe = tiny_teacher(), RecoverRecipe(steps=4, lr=0.25, jitter=2, r_bn=0.01, r_var=11.0, first_bn=10.0)
    x0 = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2])
    bounds = (torch.full((1, 1, 1, 1), -1.5), torch.full((1, 1, 1, 1), 1.5))
    losses: list[float] = []
    one = RecoverRecipe(**{**recipe.__dict__, "steps": 1})
    ours = recover(model, x0, y, one, torch.Generator().manual_seed(3), bounds, lambda step, loss: losses.append(loss))

    rows, cols = torch.randint(0, 3, (2,), generator=torch.Generator().manual_seed(3)).tolist()
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.25, betas=(0.5, 0.9), eps=1e-8)
    jit = torch.roll(x, shifts=(rows, cols), dims=(2, 3))
    loss = F.cross_entropy(model(jit), y) + 0.01 * official_bn_loss(model, jit, 11.0, 10.0)
    loss.backward()
    opt.step()
    expected = x.detach().clamp(-1.5, 1.5)
    assert losses == pytest.approx([float(loss.detach())], rel=1e-6)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)


def test_dwa_perturbs_the_teacher_on_the_batchs_own_first_view():
    model = tiny_teacher()
    x0 = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 1, 2])
    seen: list[torch.Tensor] = []

    def perturb(view: torch.Tensor) -> nn.Module:
        seen.append(view)
        return directed_perturbation(model, view, y, 12, 15e-3)

    recover(model, x0, y, RecoverRecipe(steps=2, jitter=2), torch.Generator().manual_seed(5), perturb=perturb)
    rows, cols = torch.randint(0, 3, (2,), generator=torch.Generator().manual_seed(5)).tolist()
    assert len(seen) == 1 and torch.equal(seen[0], torch.roll(x0, (rows, cols), (2, 3)))  # once, on step 0's view


def test_the_directed_perturbation_is_the_official_ascent():
    """K steps of w += (rho / K) g / (||g||_2 over all parameters + 1e-12), g the CE gradient at the current w, eval mode."""
    model = tiny_teacher()
    x = torch.randn(6, 1, 6, 6, generator=torch.Generator().manual_seed(6))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    ours = directed_perturbation(model, x, y, 12, 15e-3)
    official = copy.deepcopy(model).eval()
    for _ in range(12):
        official.zero_grad()
        F.cross_entropy(official(x), y).backward()
        with torch.no_grad():
            norm = torch.norm(torch.stack([p.grad.norm(2) for p in official.parameters()]), 2)
            for p in official.parameters():
                p.add_(p.grad * (15e-3 / 12 / (norm + 1e-12)))
    for a, b in zip(ours.parameters(), official.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not ours.training and all(torch.equal(a, b) for a, b in zip(ours.buffers(), model.buffers()))
    moved = torch.linalg.vector_norm(torch.cat([(a - b).flatten() for a, b in zip(ours.parameters(), model.parameters())]))
    assert float(moved.detach()) == pytest.approx(15e-3, rel=1e-3)  # K collinear-ish steps of rho / K: about rho in all


@pytest.fixture(scope="module")
def view(digits):
    return digits[1]


@pytest.mark.parametrize("name, init", [("sre2l", "noise"), ("dwa", "real")])
def test_recovery_batches_hold_one_image_per_class_from_the_official_initialisation(monkeypatch, manager, tmp_path, view, name,
                                                                                     init):
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(teacher, x0, y, recipe, generator, *rest):  # rest: bounds, progress, perturbation, checkpointing
        batches.append((x0.clone(), y.clone()))
        return x0

    monkeypatch.setattr(distillers, "recover", record)
    distiller = instantiate(manager.distillers.get(name), {"teacher": "resnet:depth=18,width=4", "squeeze_epochs": 1}, "quick")
    learner = instantiate(manager.learners.get("convnet"), {}, "quick")
    context = RunContext(torch.device("cpu"), 0, torch.Generator().manual_seed(0), cache_dir=tmp_path)
    artifact = distiller.distill(view, Budget.parse("ipc=3"), learner, context)
    classes = view.num_classes
    assert len(batches) == 3 and all(sorted(y.tolist()) == list(range(classes)) for _, y in batches)
    starts = torch.cat([x for x, _ in batches])
    real = view.train.x.flatten(1)
    is_real = [bool((real == s.flatten()).all(1).any()) for s in starts]
    assert all(is_real) if init == "real" else not any(is_real)
    if init == "noise":
        assert abs(float(starts.mean())) < 0.3 and float(starts.std()) == pytest.approx(1.0, abs=0.3)  # torch.randn
    assert artifact.meta["batch"] == classes and artifact.meta["init"] == init
