"""``pointwise_influence``: exact leave-one-out influence of every distilled point on every test
point (docs/analyses.md §6, paper section 5)."""
from __future__ import annotations

import math

import torch

from ddbench.analysis.runner import AnalysisContext, labelled
from ddbench.contracts.analysis import Analysis, Metric, Outcome, Subject, check_size_protocol
from ddbench.contracts.interfaces import Artifact
from ddbench.ops.probe import copies, example_losses, fit_weighted

INIT_SEED = 51_000
TOP = 9


class PointwiseInfluence(Analysis):
    """influence(i, t) = test loss on t without x_i minus with it, from one fixed initialisation.

    ``protocol=paper``: the N + 1 full-batch runs are one vmapped ensemble in which model i gives
    point i weight zero (exactly training on D without x_i). ``protocol=native``: N + 1 sequential
    runs of the learner's own fit, each with the same initialisation and the same generator seed.
    """

    name = "pointwise_influence"
    version = "1"
    description = "exact leave-one-out influence of each distilled point on each test point"
    metrics = (
        Metric("self_class_fraction@9", "fraction", True, "share of each point's 9 most-helped test images with its label"),
        Metric("own_class_influence", "cross-entropy", True, "mean influence of a point on test points of its own class"),
        Metric("harmful_points", "points", False, "points with negative mean own-class influence"),
        Metric("redundancy", "Jaccard", False, "mean top-9 overlap between same-class points"),
        Metric("concentration", "normalised entropy", None, "entropy of each point's positive influence mass / log(N_test)"),
        Metric("acc_distilled", "accuracy", True, "test accuracy of the model trained on all of D"),
    )

    def __init__(self, size: str = "ci", protocol: str = "paper", repeats: int | None = None):
        check_size_protocol(size, protocol)
        self.size, self.protocol = size, protocol
        self.repeats = repeats if repeats is not None else (1 if size == "ci" else 3)

    def analyze(self, subject: Subject, context: AnalysisContext) -> Outcome:
        d = labelled(subject).to(context.device)
        test = subject.test
        total = torch.zeros(len(d.x), len(test.x), device=context.device)
        acc = 0.0
        for r in range(self.repeats):
            losses, acc_r = self.loo_losses(subject, d, INIT_SEED + r)
            total += losses[1:] - losses[0]
            acc += acc_r / self.repeats
            context.progress(f"pointwise_influence {subject.label}", r + 1, self.repeats)
        influence = total / self.repeats
        own = d.y.argmax(1) if d.y.is_floating_point() else d.y
        metrics = summarise(influence, own, test.y)
        metrics["acc_distilled"] = acc
        top = influence.topk(min(TOP, len(test.x)), dim=1).indices
        tensors = {"influence": influence.half().cpu(), "labels": own.cpu(), "top": top.cpu(),
                   "distilled": d.x.detach().half().cpu(), "top_images": test.x[top].half().cpu()}  # for the page's grids
        return Outcome(metrics, tensors,
                       {"protocol": self.protocol, "repeats": self.repeats, "n": len(d.x), "n_test": len(test.x)})

    def loo_losses(self, subject: Subject, d: Artifact, seed: int) -> tuple[torch.Tensor, float]:
        """(N + 1, N_test) per-example test cross-entropy: row 0 trained on D, row i + 1 on D without x_i."""
        n = len(d.x)
        init = subject.learner.build(subject.view, seed).to(d.x.device)
        models = copies(init, n + 1)
        if self.protocol == "paper":
            weights = torch.ones(n + 1, n, device=d.x.device)
            weights[1:] -= torch.eye(n, device=d.x.device)
            fit_weighted(models, d.x.expand(n + 1, *d.x.shape), d.y.expand(n + 1, *d.y.shape), weights)
        else:
            keep = [torch.arange(n)] + [torch.cat([torch.arange(i), torch.arange(i + 1, n)]) for i in range(n)]
            for model, idx in zip(models, keep):
                part = Artifact({**d.tensors, "x": d.x[idx], "y": d.y[idx]}, d.recipe)
                subject.learner.fit(model, part, subject.recipe, torch.Generator(d.x.device).manual_seed(seed))
        rows, acc = [], 0.0
        for i, model in enumerate(models):
            logits = subject.learner.predict(model, subject.test.x)
            rows.append(example_losses(logits, subject.test.y))
            if i == 0:
                acc = float((logits.argmax(1) == subject.test.y).float().mean())
        return torch.stack(rows), acc


def summarise(influence: torch.Tensor, own: torch.Tensor, test_y: torch.Tensor) -> dict[str, float | bool]:
    """The summary metrics of an (N, N_test) influence matrix (docs/analyses.md §6)."""
    n, n_test = influence.shape
    top = influence.topk(min(TOP, n_test), dim=1).indices
    self_class = (test_y[top] == own[:, None]).float().mean(1)
    own_mask = (test_y[None, :] == own[:, None]).float()
    own_mean = (influence * own_mask).sum(1) / own_mask.sum(1).clamp(min=1)
    overlaps = []
    sets = [set(row.tolist()) for row in top]
    for i in range(n):
        for j in range(i + 1, n):
            if own[i] == own[j]:
                overlaps.append(len(sets[i] & sets[j]) / len(sets[i] | sets[j]))
    positive = influence.clamp(min=0)
    mass = positive / positive.sum(1, keepdim=True).clamp(min=1e-12)
    entropy = -(mass * mass.clamp(min=1e-12).log()).sum(1) / math.log(n_test)
    return {
        "self_class_fraction@9": float(self_class.mean()),
        "own_class_influence": float(own_mean.mean()),
        "harmful_points": float((own_mean < 0).sum()),
        "redundancy": float(sum(overlaps) / len(overlaps)) if overlaps else 0.0,
        "concentration": float(entropy.mean()),
    }
