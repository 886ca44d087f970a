"""ZCA whitening as an image-task option (docs/methods.md §1): the map fitted on the train split, its
closed form, kornia's formula, the same map on validation and test, the declared info, bad options."""
from __future__ import annotations

import pytest
import torch

from ddbench.cli import main
from ddbench.contracts.interfaces import Split
from ddbench.errors import SuiteError
from ddbench.plugins import instantiate, parse_named
from ddbench_analyses.mixing import pixel_w1
from ddbench_tasks import zca as zca_module
from ddbench_tasks.images import ImageTask
from ddbench_tasks.splits import stratified_split
from ddbench_tasks.zca import Zca


class Correlated(ImageTask):
    """600 train / 200 test generated 3x4x4 images in [0, 1] with correlated pixels, 10 classes."""

    name = "zca-correlated"
    input_shape = (3, 4, 4)

    def raw(self) -> tuple[Split, Split]:
        g = torch.Generator().manual_seed(0)
        mixing = torch.randn(48, 48, generator=g) / 4

        def make(n: int) -> Split:
            return Split(torch.sigmoid(torch.randn(n, 48, generator=g) @ mixing).view(n, 3, 4, 4), torch.arange(n) % 10)

        return make(600), make(200)


def kornia_zca(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """kornia's ``zca_mean`` (dim 0, unbiased) transcribed: (matrix, mean)."""
    flat = x.reshape(len(x), -1).double()
    mean = flat.mean(0, keepdim=True)
    centred = flat - mean
    u, s, _ = torch.linalg.svd(centred.T @ centred / (len(x) - 1))
    return u @ (torch.rsqrt(s + eps).view(-1, 1) * u.T), mean


def test_whitened_train_covariance_is_its_closed_form_and_validation_and_test_get_the_same_map(monkeypatch):
    monkeypatch.setattr(zca_module, "CHUNK", 100)  # several chunks in both passes
    task = Correlated(zca=True)
    data = task.load()
    train, test = task.raw()
    train, val = stratified_split(train, task.val_fraction, task.seed)  # the task's own carving
    flat = train.x.flatten(1).double()
    eigenvalues, u = torch.linalg.eigh(torch.cov(flat.T))  # N - 1, as kornia's default
    closed = u @ torch.diag(eigenvalues / (eigenvalues + 0.1)) @ u.T
    whitened = data.train.x.flatten(1).double()
    assert (torch.cov(whitened.T) - closed).abs().max() < 1e-4
    assert whitened.mean(0).abs().max() < 1e-5
    fitted = Zca.fit(train.x)
    for raw, split in ((val, data.val), (test, data.test)):
        assert torch.allclose(split.x, fitted(raw.x), atol=1e-6) and torch.equal(split.y, raw.y)
    assert data.val.x.flatten(1).mean(0).abs().max() > 1e-3  # not refitted on its own examples
    matrix, mean = kornia_zca(train.x, 0.1)
    assert (fitted.matrix - matrix).abs().max() < 1e-8 and (fitted.mean - mean.flatten()).abs().max() < 1e-12
    assert torch.allclose(data.test.x.flatten(1).double(), (test.x.flatten(1).double() - mean) @ matrix, atol=1e-5)


def test_info_declares_the_preprocessing(manager):
    digits = manager.tasks.get("digits")
    assert parse_named("digits:zca=true") == ("digits", {"zca": True})
    on, off = instantiate(digits, {"zca": True}).info(), instantiate(digits, {}).info()
    assert (on["zca"], on["zca_eps"], on["mean"], on["std"]) == (True, 0.1, [], [])
    assert off["zca"] is False and off["mean"] == [0.3053] and "zca_eps" not in off
    assert instantiate(manager.tasks.get("cifar10"), {"zca": True}).zca  # tasks read from files take it too
    assert pixel_w1(torch.ones(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), on) == pytest.approx(1.0)  # no mean/std: as they are


@pytest.mark.parametrize("task, options, message", [
    ("cifar10", {"zca": "maybe"}, "zca must be true or false"),
    ("mnist1d", {"zca": True}, r"'mnist1d' has \(40,\) inputs: leave zca out"),
    ("multi-index", {"zca": True}, "'multi-index' has no option 'zca'"),
])
def test_bad_zca_options_are_one_line_errors(manager, task, options, message):
    with pytest.raises(SuiteError, match=message):
        instantiate(manager.tasks.get(task), options)


def test_the_command_line_rejects_a_bad_zca_value(capsys, tmp_path):
    code = main(["run", "--task", "cifar10:zca=maybe", "--distiller", "random", "--budget", "ipc=1",
                 "--store", str(tmp_path / "s.sqlite"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "zca must be true or false" in err and "\n" not in err
