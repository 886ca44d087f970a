"""``early_agreement``: does a model trained on distilled data agree more with early-stopped real
models than with accuracy-matched subset models? (docs/analyses.md §5, paper section 4.1-4.2)."""
from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from ddbench.analysis.runner import AnalysisContext, labelled
from ddbench.contracts.analysis import Analysis, Metric, Outcome, Subject, check_size_protocol
from ddbench.ops.hessian import hessian_trace, module_loss
from ddbench.ops.probe import agreement, class_draw, example_losses, fit_protocol, fit_weighted, train_steps

SIZES: dict[str, dict[str, Any]] = {
    # runs, batch and epochs of the real probe runs; subset pool size, fraction range and accuracy band.
    # paper: 30 runs of one epoch at batch 256; 520 subset models on U(0.5 %, 5 %) of train, band 0.01.
    # ci (ours): fewer, shorter runs and a wider fraction range and band, so that small tasks match.
    # The Hessian trace along probe run 0 (paper section 4.3): before every `hessian_every`-th iteration up to
    # `hessian_steps`, at most `hessian_probes` Rademacher probes to relative tolerance `hessian_rtol`, the real
    # trace on a fixed class-balanced subset of `hessian_subset` train images. paper: every iteration of the
    # first 300, 100 probes, 1e-3 as the official notebook, but a 5k-image real subset (ours: the notebook uses the
    # whole train loader); ci (ours): every 10th of the first 60, 10 probes, 1e-2, 256 images.
    "ci": {"runs": 5, "batch": 64, "epochs": 2, "subset_models": 24, "fraction": (0.01, 0.10), "band": 0.02,
           "hessian_every": 10, "hessian_steps": 60, "hessian_probes": 10, "hessian_rtol": 1e-2, "hessian_subset": 256},
    "paper": {"runs": 30, "batch": 256, "epochs": 1, "subset_models": 520, "fraction": (0.005, 0.05), "band": 0.01,
              "hessian_every": 1, "hessian_steps": 300, "hessian_probes": 100, "hessian_rtol": 1e-3, "hessian_subset": 5000},
}
HESSIAN = ("auto", "exact", "hutchinson", "off")
HESSIAN_SEED = 43_000
EMA = 0.9  # smoothing weight per iteration of both traces before they are compared
BAND = 0.2  # trace_divergence_step: the smoothed trace on D leaves the smoothed real one * (1 +- BAND)
FLOOR = 0.1  # checkpoints where the real trace is below this fraction of its peak are not compared (ours)
PROBE_SEED = 41_000
SUBSET_SEED = 42_000
CHUNK = 8  # subset models trained together, padded to the largest subset of the chunk
FIT_THRESHOLD = 0.99


class EarlyAgreement(Analysis):
    """Test-set agreement of distilled-data models with validation-matched early-stopped real models
    and with validation-matched small-subset models; ``steps_to_fit_distilled`` and the Hessian
    trace on D and on real data along probe run 0."""

    name = "early_agreement"
    version = "3"
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
        Metric("hessian_trace_real_peak", "trace", None, "largest Hessian trace of the loss on real data along probe run 0"),
        Metric("hessian_trace_distilled_peak", "trace", None, "largest Hessian trace of the loss on D along probe run 0"),
        Metric("hessian_trace_distilled_end", "trace", None, "the trace on D at the last checkpoint"),
        Metric("hessian_trace_real_end", "trace", None, "the trace on real data at the last checkpoint"),
        Metric("trace_divergence_step", "steps", None,
               "first checkpoint where the smoothed trace on D leaves +-20 % of the smoothed real one (-1: never)"),
    )

    def __init__(self, size: str = "ci", protocol: str = "paper", repeats: int = 3, runs: int | None = None,
                 subset_models: int | None = None, band: float | None = None, hessian: str = "auto"):
        check_size_protocol(size, protocol)
        if hessian not in HESSIAN:
            raise ValueError(f"hessian must be one of {', '.join(HESSIAN)} (got {hessian!r})")
        self.size, self.protocol, self.repeats, self.hessian = size, protocol, repeats, hessian
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
        fit_steps, fit_end, traces = self._probe_run_zero(subject, d, context)
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
        info = {"settings": s, "protocol": self.protocol, "repeats": self.repeats, "few_subset_matches": matched / len(val_acc) < 5}
        if traces is not None:
            metrics.update(curvature(traces))
            tensors.update({f"hessian_{k}": v.cpu() for k, v in traces.items() if k != "method"})
            info["hessian"] = traces["method"]
        return Outcome(metrics, tensors, info)

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

    def _checkpoints(self, subject: Subject) -> list[int]:
        s = self.settings
        return list(range(0, min(s["hessian_steps"], self._probe_steps(subject)) + 1, s["hessian_every"]))

    def _probe_run_zero(self, subject: Subject, d, context: AnalysisContext) -> tuple[float, float, dict | None]:
        """Probe run 0 again: accuracy on D after every iteration (paper section 4.2) and, at the
        checkpoints, the Hessian trace of the loss on D beside the cached one on real data (section 4.3)."""
        own = d.y.argmax(1) if d.y.is_floating_point() else d.y
        checkpoints = set(self._checkpoints(subject)) if self.hessian != "off" else set()
        fits: list[float] = []
        traces: list[float] = []
        methods: set[str] = set()
        generator = torch.Generator().manual_seed(HESSIAN_SEED)

        def record(step: int, model: torch.nn.Module) -> None:
            fits.append(self._acc(subject, model, d.x, own))
            if step in checkpoints:
                trace, method = self._trace(model, d.x, d.y, generator)
                traces.append(trace)
                methods.add(method)
                context.progress(f"early_agreement Hessian on D ({subject.label})", len(traces), len(checkpoints))
        self._run_zero(subject, context, record)
        first = next((step for step, a in enumerate(fits) if a >= FIT_THRESHOLD), -1)
        if not checkpoints:
            return float(first), fits[-1], None
        config = {"version": self.version, **self._probe_config(), "method": self.hessian, "checkpoints": sorted(checkpoints),
                  **{k: v for k, v in self.settings.items() if k.startswith("hessian_")}}
        real = context.cached(subject, "probe-hessian", config, lambda: self._real_traces(subject, context))
        return float(first), fits[-1], {"steps": torch.tensor(sorted(checkpoints)), "distilled": torch.tensor(traces),
                                        "real": real["trace"].cpu(), "method": "/".join(sorted(methods))}

    def _real_traces(self, subject: Subject, context: AnalysisContext) -> dict[str, torch.Tensor]:
        """The Hessian trace of the loss on a fixed class-balanced real subset at probe run 0's checkpoints."""
        view = subject.view
        classes = int(view.num_classes or 1)
        idx = class_draw(view.train.y, max(1, self.settings["hessian_subset"] // classes), torch.Generator().manual_seed(HESSIAN_SEED))
        real = view.train.to(context.device)
        x, y = real.x[idx.to(real.y.device)], real.y[idx.to(real.y.device)]
        checkpoints = set(self._checkpoints(subject))
        generator = torch.Generator().manual_seed(HESSIAN_SEED + 1)
        traces: list[float] = []

        def record(step: int, model: torch.nn.Module) -> None:
            if step in checkpoints:
                traces.append(self._trace(model, x, y, generator)[0])
                context.progress(f"early_agreement Hessian on real data ({view.name})", len(traces), len(checkpoints))
        self._run_zero(subject, context, record, steps=max(checkpoints))
        return {"trace": torch.tensor(traces)}

    def _run_zero(self, subject: Subject, context: AnalysisContext, on_step, steps: int | None = None) -> None:
        train = subject.view.train.to(context.device)
        model = subject.learner.build(subject.view, PROBE_SEED).to(context.device)
        train_steps(model, train.x, train.y, self._probe_steps(subject) if steps is None else steps, self.settings["batch"],
                    torch.Generator().manual_seed(PROBE_SEED), on_step=on_step)

    def _trace(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[float, str]:
        """The trace of the Hessian of the training loss (mean cross-entropy, train mode) on (x, y)."""
        model.train()
        loss, weights = module_loss(model, x, lambda logits: example_losses(logits, y))
        return hessian_trace(loss, weights, self.hessian, generator, self.settings["hessian_probes"], self.settings["hessian_rtol"])

    @staticmethod
    def _pred(subject: Subject, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return subject.learner.predict(model, x).argmax(1)

    def _acc(self, subject: Subject, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        return float((self._pred(subject, model, x) == y).float().mean())


def curvature(traces: dict[str, torch.Tensor]) -> dict[str, float]:
    """Summary of the trace curves on D and on real data at the same checkpoints: peaks, last values
    and the first checkpoint where the trace on D leaves the band around the real one. Both curves
    are smoothed by a moving average of weight EMA per iteration, as the official notebook smooths
    both; ours: EMA ** gap between sparse checkpoints, the band, and skipping checkpoints where the real
    trace is below FLOOR of its peak (near zero at initialisation, where a relative band means nothing)."""
    steps, distilled, real = traces["steps"].tolist(), traces["distilled"].tolist(), traces["real"].tolist()
    floor = FLOOR * max(abs(r) for r in real)
    smooth: tuple[float, float] | None = None
    previous, divergence = 0, -1
    for step, value, reference in zip(steps, distilled, real):
        if abs(reference) < floor:
            continue
        weight = EMA ** (step - previous)
        smooth = (value, reference) if smooth is None else (weight * smooth[0] + (1 - weight) * value,
                                                            weight * smooth[1] + (1 - weight) * reference)
        previous = step
        if abs(smooth[0] - smooth[1]) > BAND * abs(smooth[1]):
            divergence = step
            break
    return {"hessian_trace_real_peak": max(real), "hessian_trace_distilled_peak": max(distilled),
            "hessian_trace_real_end": real[-1], "hessian_trace_distilled_end": distilled[-1],
            "trace_divergence_step": float(divergence)}
