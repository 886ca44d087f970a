"""The mgdd plugin: the least-squares label solve, the regeneration form's accounting, the kit."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ddbench import Budget
from ddbench.errors import BudgetError
from ddbench.plugins import instantiate
from ddbench.testing import check_distiller
from ddbench.testing.tasks import registered_task
from ddbench_mgdd.distiller import MGDD
from ddbench_mgdd.objective import as_distribution, solve


def test_the_label_solve_recovers_the_targets_when_the_synthetic_set_is_the_real_one():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(12, 40, generator=g)
    targets = F.one_hot(torch.arange(12) % 3, 3).float()
    loss, labels = solve(features, features, targets, torch.zeros(12, 3), lam=1e-6, mu=1e-6)
    assert float(loss) < 1e-3 and torch.allclose(labels, targets, atol=0.05)


def test_the_label_solve_is_differentiable_and_gives_bounded_distributions():
    g = torch.Generator().manual_seed(1)
    syn = torch.randn(6, 20, generator=g, requires_grad=True)
    loss, labels = solve(syn, torch.randn(30, 20, generator=g), F.one_hot(torch.arange(30) % 3, 3).float(),
                         F.one_hot(torch.arange(6) % 3, 3).float(), lam=1e-3, mu=1e-2)
    loss.backward()
    assert syn.grad is not None and torch.isfinite(syn.grad).all()
    dist = as_distribution(torch.tensor([[0.7, -0.2, 0.5], [-1.0, -2.0, -0.1]]))
    assert torch.allclose(dist.sum(1), torch.ones(2)) and (dist >= 0).all()
    assert torch.allclose(dist[1], torch.full((3,), 1 / 3))


def test_the_regeneration_form_pays_for_its_weights_in_images(digits):
    _, view, _ = digits  # 10 classes of 1x8x8: ipc=10 is 6,500 scalars
    mgdd = MGDD(form="regenerate", width=16, depth=2)  # 2,785 weights
    assert mgdd.rows_per_class(view, Budget.parse("ipc=10")) == (6500 - 2785) // 650
    assert MGDD(form="outputs").rows_per_class(view, Budget.parse("ipc=10")) == 10
    with pytest.raises(BudgetError, match="cannot hold mgdd's generator"):
        mgdd.rows_per_class(view, Budget.parse("ipc=2"))


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="unknown form"):
        MGDD(form="images")
    with pytest.raises(ValueError, match="augment must be true or false"):
        MGDD(augment="maybe")


@pytest.mark.slow
@pytest.mark.parametrize("form", ["outputs", "regenerate"])
def test_mgdd_passes_the_conformance_kit(form, tmp_path):
    options = {"form": form, "source": "digits", "meta_steps": 2, "adapt_steps": 2, "width": 4, "batch_real": 32}
    report = check_distiller(MGDD, options, tasks=[registered_task("digits", ["ipc=2"], impossible="params=100")],
                             cache_dir=tmp_path)
    assert report.passed
