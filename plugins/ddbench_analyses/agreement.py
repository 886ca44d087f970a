"""``early_agreement``: does a model trained on distilled data agree more with early-stopped real
models than with accuracy-matched subset models? (docs/analyses.md §5, paper section 4.1-4.2)."""
from __future__ import annotations

import math
import statistics

import torch

from ddbench.analyze import labelled
from ddbench.analysis import Analysis, AnalysisContext, Metric, Outcome, Subject, check_size_protocol
from ddbench.ops.probe import agreement, class_draw, fit_protocol, fit_weighted, train_steps

SIZES = {
    # runs, batch and epochs of the real probe runs; subset pool size, fraction range and accuracy band.
    # paper: 30 runs of one epoch at batch 256; 520 subset models on U(0.5 %, 5 %) of train, band 0.01.
    # ci (ours): fewer, shorter runs and a wider fraction range and band, so that small tasks match.
    "ci": {"runs": 5, "batch": 64, "epochs": 2, "subset_models": 24, "fraction": (0.01, 0.10), "band": 0.02},
    "paper": {"runs": 30, "batch": 256, "epochs": 1, "subset_models": 520, "fraction": (0.005, 0.05), "band": 0.01},
}
PROBE_SEED = 41_000
SUBSET_SEED = 42_000
CHUNK = 8  # subset models trained together, padded to the largest subset of the chunk
FIT_THRESHOLD = 0.99


class EarlyAgreement(Analysis):
    """Test-set agreement of distilled-data models with validation-matched early-stopped real models
    and with validation-matched small-subset models; ``steps_to_fit_distilled`` on a probe run."""

    name = "early_agreement"
    version = "1"
    description = "agreement with early-stopped real models vs accuracy-matched subset models"
    metrics = (
        Metric("agreement_early", "fraction", True, "test agreement with the matched early-stopped models"),
        Metric("agreement_early_std", "fraction", None, "its std over (distilled model, probe run) pairs"),
        Metric("agreement_subset", "fraction", None, "test agreement with the subset models in the accuracy band"),
        Metric("agreement_subset_std", "fraction", None, "its std over pairs"),
        Metric("agreement_gap", "fraction", True, "agreement_early - agreement_subset: positive = more like early training"),
        Metric("matched_step_mean", "steps", None, "mean probe iteration matched on validation accuracy"),
        Metric("n_subset_matched", "models", True, "subset models in the validation-accuracy band (flag if < 5)"),
        Metric("distilled_val_acc", "accuracy", None, "validation accuracy of the distilled-data models (what is matched)"),
        Metric("acc_distilled", "accuracy", True, "test accuracy of the distilled-data models"),
        Metric("steps_to_fit_distilled", "steps", False, "first real-training iteration fitting D at >= 99 % (-1: not within the run)"),
        Metric("distilled_fit_at_end", "accuracy", None, "accuracy on D at the end of that probe run"),
    )

    def __init__(self, size: str = "ci", protocol: str = "paper", repeats: int = 3, runs: int | None = None,
                 subset_models: int | None = None, band: float | None = None):
        check_size_protocol(size, protocol)
        self.size, self.protocol, self.repeats = size, protocol, repeats
        self.settings = dict(SIZES[size])
        for key, value in (("runs", runs), ("subset_models", subset_models), ("band", band)):
            if value is not None:
                self.settings[key] = value

    def analyze(self, subject: Subject, context: AnalysisContext) -> Outcome:
        s, view, test = self.settings, subject.view, subject.test
        d = labelled(subject).to(context.device)
        models = fit_protocol(subject.learner, view, d, list(range(self.repeats)), self.protocol, subject.recipe)
        val_acc = [self._acc(subject, m, view.val.x, view.val.y) for m in models]
        preds = torch.stack([self._pred(subject, m, test.x) for m in models])
        probes = context.cached(subject, "probe-runs", {"version": self.version, **self._probe_config()},
                                lambda: self._probe_runs(subject, context))
        pool = context.cached(subject, "subset-pool", {"version": self.version, **self._pool_config()},
                              lambda: self._subset_pool(subject, context))
        early, subset, steps, matched = [], [], [], 0
        for j, target in enumerate(val_acc):
            t = (probes["val_acc"] - target).abs().argmin(1)  # per run: the iteration closest on validation
            steps += t.tolist()
            chosen = probes["test_pred"][torch.arange(len(t)), t].long()
            early += agreement(preds[j], chosen).tolist()
            near = ((pool["val_acc"] - target).abs() <= s["band"]).nonzero().flatten()
            matched += len(near)
            subset += agreement(preds[j], pool["test_pred"][near].long()).tolist()
        fit_steps, fit_end = self._steps_to_fit(subject, d, context)
        metrics: dict[str, float | bool] = {
            "agreement_early": statistics.fmean(early), "agreement_early_std": statistics.pstdev(early),
            "matched_step_mean": statistics.fmean(steps), "n_subset_matched": matched / len(val_acc),
            "distilled_val_acc": statistics.fmean(val_acc),
            "acc_distilled": statistics.fmean(float((p == test.y).float().mean()) for p in preds),
            "steps_to_fit_distilled": fit_steps, "distilled_fit_at_end": fit_end,
        }
        if subset:
            metrics.update(agreement_subset=statistics.fmean(subset), agreement_subset_std=statistics.pstdev(subset))
            metrics["agreement_gap"] = metrics["agreement_early"] - metrics["agreement_subset"]
        tensors = {"early": torch.tensor(early), "subset": torch.tensor(subset), "matched_steps": torch.tensor(steps),
                   "probe_val_acc": probes["val_acc"].cpu()}
        return Outcome(metrics, tensors, {"settings": s, "protocol": self.protocol, "repeats": self.repeats,
                                          "few_subset_matches": matched / len(val_acc) < 5})

    # -- shared, cached state ------------------------------------------------------------------
    def _probe_config(self) -> dict:
        s = self.settings
        return {"runs": s["runs"], "batch": s["batch"], "epochs": s["epochs"], "seed": PROBE_SEED, "lr": 0.01, "momentum": 0.9}

    def _pool_config(self) -> dict:
        s = self.settings
        return {"models": s["subset_models"], "fraction": list(s["fraction"]), "seed": SUBSET_SEED, "steps": 300}

    def _probe_steps(self, subject: Subject) -> int:
        return self.settings["epochs"] * math.ceil(len(subject.view.train.x) / self.settings["batch"])

    def _probe_runs(self, subject: Subject, context: AnalysisContext) -> dict[str, torch.Tensor]:
        """Real training runs recording validation accuracy and test predictions at every iteration."""
        view, test, s = subject.view, subject.test, self.settings
        train = view.train.to(context.device)
        steps = self._probe_steps(subject)
        val_acc = torch.zeros(s["runs"], steps + 1)
        test_pred = torch.zeros(s["runs"], steps + 1, len(test.x), dtype=torch.int8)
        for r in range(s["runs"]):
            def record(step: int, model: torch.nn.Module, _r: int = r) -> None:
                val_acc[_r, step] = self._acc(subject, model, view.val.x, view.val.y)
                test_pred[_r, step] = self._pred(subject, model, test.x).to(torch.int8).cpu()
            model = subject.learner.build(view, PROBE_SEED + r).to(context.device)
            train_steps(model, train.x, train.y, steps, s["batch"], torch.Generator().manual_seed(PROBE_SEED + r), on_step=record)
            context.progress(f"early_agreement probe runs ({view.name})", r + 1, s["runs"])
        return {"val_acc": val_acc.to(context.device), "test_pred": test_pred.to(context.device)}

    def _subset_pool(self, subject: Subject, context: AnalysisContext) -> dict[str, torch.Tensor]:
        """Models trained on class-balanced random fractions of train (full batch, 300 steps: ours,
        the paper trains them 100 epochs at batch 256), with their validation accuracy and test predictions."""
        view, test, s = subject.view, subject.test, self.settings
        train = view.train.to(context.device)
        classes = int(view.num_classes or 0)
        per_class_n = int(torch.bincount(train.y, minlength=classes).min())
        g = torch.Generator().manual_seed(SUBSET_SEED)
        lo, hi = s["fraction"]
        fractions = lo + (hi - lo) * torch.rand(s["subset_models"], generator=g)
        sizes = [max(1, min(per_class_n, round(float(f) * len(train.x) / classes))) for f in fractions]
        draws = [class_draw(train.y, n, g) for n in sizes]
        order = sorted(range(len(draws)), key=lambda i: sizes[i])
        val_acc = torch.zeros(len(draws))
        test_pred = torch.zeros(len(draws), len(test.x), dtype=torch.int8)
        for c in range(0, len(order), CHUNK):
            chunk = order[c : c + CHUNK]
            width = max(len(draws[i]) for i in chunk)
            idx = torch.stack([torch.cat([draws[i], draws[i][: width - len(draws[i])].new_zeros(width - len(draws[i]))]) for i in chunk])
            weights = torch.stack([(torch.arange(width) < len(draws[i])).float() for i in chunk]).to(context.device)
            models = [subject.learner.build(view, SUBSET_SEED + i).to(context.device) for i in chunk]
            fit_weighted(models, train.x[idx], train.y[idx], weights)
            for i, m in zip(chunk, models):
                val_acc[i] = self._acc(subject, m, view.val.x, view.val.y)
                test_pred[i] = self._pred(subject, m, test.x).to(torch.int8).cpu()
            context.progress(f"early_agreement subset pool ({view.name})", min(c + CHUNK, len(order)), len(order))
        return {"val_acc": val_acc.to(context.device), "test_pred": test_pred.to(context.device)}

    def _steps_to_fit(self, subject: Subject, d, context: AnalysisContext) -> tuple[float, float]:
        """Probe run 0 again, measuring accuracy on D after every iteration (paper section 4.2)."""
        view = subject.view
        train = view.train.to(context.device)
        own = d.y.argmax(1) if d.y.is_floating_point() else d.y
        fits: list[float] = []
        model = subject.learner.build(view, PROBE_SEED).to(context.device)
        train_steps(model, train.x, train.y, self._probe_steps(subject), self.settings["batch"],
                    torch.Generator().manual_seed(PROBE_SEED), on_step=lambda step, m: fits.append(self._acc(subject, m, d.x, own)))
        first = next((step for step, a in enumerate(fits) if a >= FIT_THRESHOLD), -1)
        return float(first), fits[-1]

    @staticmethod
    def _pred(subject: Subject, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return subject.learner.predict(model, x).argmax(1)

    def _acc(self, subject: Subject, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        return float((self._pred(subject, model, x) == y).float().mean())
