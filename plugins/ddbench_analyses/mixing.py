"""``mixing``: add k real images per class to a distilled set (docs/analyses.md §3, paper section 3)."""
from __future__ import annotations

import itertools
import statistics

import torch
import torch.nn.functional as F

from ddbench.analysis.runner import AnalysisContext, labelled
from ddbench.contracts.analysis import Analysis, Metric, Outcome, Subject, check_size_protocol
from ddbench.contracts.interfaces import Artifact
from ddbench.ops.probe import class_draw, combine, fit_protocol
from ddbench.ops.subsets import random_subset
from ddbench.vocab import Budget

K_GRID = {"ci": (0, 2, 10, 50), "paper": (0, 2, 10, 50, 250)}
REAL_SEED = 31_000  # the nested real draws R_k: the same for every artifact of a task (ours)
BASE_SEED = 32_000  # the random real subset of the artifact's size (seeded apart from R_k)


class Mixing(Analysis):
    """Accuracy of D plus k real images per class against a random real subset plus the same images."""

    name = "mixing"
    version = "1"
    description = "add k real images per class to the distilled set (is it a drop-in for real data?)"
    metrics = (
        Metric("acc@*", "accuracy", True, "test accuracy of D + R_k"),
        Metric("acc_std@*", "accuracy", None, "std over repeats of acc@k"),
        Metric("acc_base@*", "accuracy", True, "test accuracy of a random real subset of D's size + R_k"),
        Metric("harm@*", "accuracy", False, "acc@0 - acc@k: positive when adding real data hurts"),
        Metric("gap@*", "accuracy", True, "acc@k - acc_base@k"),
        Metric("monotone", "bool", True, "acc@k never decreases in k"),
        Metric("k_converge", "images per class", None, "smallest k with |acc - acc_base| <= 0.01 (-1: none)"),
        Metric("pixel_w1", "pixel intensity", False, "Wasserstein-1 distance of de-normalised pixel histograms of D and real train"),
    )

    def __init__(self, size: str = "ci", protocol: str = "paper", repeats: int = 3, k_grid: list[int] | None = None):
        check_size_protocol(size, protocol)
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1 (got {repeats})")
        self.size, self.protocol, self.repeats = size, protocol, repeats
        self.k_grid = tuple(k_grid) if k_grid is not None else K_GRID[size]

    def analyze(self, subject: Subject, context: AnalysisContext) -> Outcome:
        view, test, device = subject.view, subject.test, context.device
        classes = int(view.num_classes or 0)
        d = labelled(subject).to(device)
        train = view.train.to(device)
        smallest = int(torch.bincount(train.y, minlength=classes).min())
        grid = [k for k in self.k_grid if k <= smallest]
        real = class_draw(train.y, max(grid), torch.Generator().manual_seed(REAL_SEED))
        n = len(d.x)
        base_idx = random_subset(view, Budget("ipc", max(1, n // classes)), torch.Generator(train.y.device).manual_seed(BASE_SEED))
        base_y = train.y[base_idx]
        if d.y.is_floating_point():
            base_y = F.one_hot(base_y, classes).to(d.y.dtype)
        base = Artifact({**d.tensors, "x": train.x[base_idx], "y": base_y}, d.recipe)
        seeds = list(range(self.repeats))
        acc, acc_base, std = {}, {}, {}
        for i, k in enumerate(grid):
            extra = real[: k * classes]
            values = {}
            for which, start in (("d", d), ("base", base)):
                data = combine(start, train.x[extra], train.y[extra], classes)
                models = fit_protocol(subject.learner, view, data, seeds, self.protocol, subject.recipe)
                values[which] = [float((subject.learner.predict(m, test.x).argmax(1) == test.y).float().mean()) for m in models]
            acc[k], acc_base[k] = statistics.fmean(values["d"]), statistics.fmean(values["base"])
            std[k] = statistics.pstdev(values["d"])
            context.progress(f"mixing {subject.label}", i + 1, len(grid))
        metrics: dict[str, float | bool] = {}
        for k in grid:
            metrics[f"acc@{k}"], metrics[f"acc_std@{k}"], metrics[f"acc_base@{k}"] = acc[k], std[k], acc_base[k]
            metrics[f"gap@{k}"] = acc[k] - acc_base[k]
            if k and 0 in acc:
                metrics[f"harm@{k}"] = acc[0] - acc[k]
        metrics["monotone"] = all(acc[a] <= acc[b] for a, b in itertools.pairwise(grid))
        metrics["k_converge"] = next((k for k in grid if abs(acc[k] - acc_base[k]) <= 0.01), -1)
        metrics["pixel_w1"] = pixel_w1(d.x, train.x, view.info)
        curves = torch.tensor([[acc[k], acc_base[k], std[k]] for k in grid])
        return Outcome(metrics, {"k": torch.tensor(grid), "curves": curves},
                       {"k_grid": grid, "k_dropped": [k for k in self.k_grid if k > smallest], "protocol": self.protocol,
                        "repeats": self.repeats})


def pixel_w1(x: torch.Tensor, real: torch.Tensor, info: dict) -> float:
    """W1 distance between the de-normalised pixel-intensity distributions of ``x`` and ``real``
    (quantile functions compared on 1,000 levels; inputs as they are where the task declares no
    ``mean``/``std``, e.g. ZCA-whitened)."""
    def pixels(t: torch.Tensor) -> torch.Tensor:
        c = t.shape[1]
        mean = torch.tensor(info.get("mean") or (0.0,) * c, device=t.device).view(1, -1, 1, 1)
        std = torch.tensor(info.get("std") or (1.0,) * c, device=t.device).view(1, -1, 1, 1)
        return (t * std + mean).flatten().float() if t.dim() == 4 else t.flatten().float()
    q = torch.linspace(0, 1, 1000, device=x.device)
    a, b = pixels(x.detach()), pixels(real)
    b = b[torch.randperm(len(b), generator=torch.Generator().manual_seed(0))[:1_000_000].to(b.device)]
    return float((torch.quantile(a, q) - torch.quantile(b, q)).abs().mean())
