"""``recognition``: do models trained on real data alone classify the distilled images as their own
class? (docs/analyses.md §4, paper section 3)."""
from __future__ import annotations

import statistics

import torch

from ddbench.analyze import labelled
from ddbench.analysis import Analysis, AnalysisContext, Metric, Outcome, Subject, check_size_protocol
from ddbench.interfaces import RunContext
from ddbench.ops.teacher import teacher_for

POOL = {
    # (learner spec, epochs), each trained on the full real train split without augmentation by
    # ddbench.ops.teacher (SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256, one x0.1 decay).
    # ci sizes and the paper's ResNet epochs (it loaded checkpoints) are ours.
    "ci": (("convnet:width=32", 20), ("convnet:width=16", 10), ("resnet:depth=18,width=16", 10)),
    "paper": (("convnet", 40), ("convnet:width=16", 20), ("resnet:depth=18", 200), ("resnet:depth=34", 200)),
}


class Recognition(Analysis):
    """The fraction of distilled images a pool of real-trained reference models assigns to their own label."""

    name = "recognition"
    version = "1"
    description = "recognition of distilled images by a pool of real-trained models (are they real-like?)"
    metrics = (
        Metric("recognition_acc@*", "fraction", True, "distilled images predicted as their own label by pool model *"),
        Metric("recognition_acc_mean", "fraction", True, "mean of recognition_acc over the pool"),
        Metric("own_class_confidence", "probability", True, "mean softmax probability of the own label, over pool and images"),
        Metric("pool_test_acc@*", "accuracy", True, "test accuracy of pool model * (measured, never used to choose)"),
    )

    def __init__(self, size: str = "ci", protocol: str = "paper", pool: list[str] | None = None):
        check_size_protocol(size, protocol)  # no training on D here: protocol is accepted for a uniform interface
        self.size, self.protocol = size, protocol
        self.pool = tuple(POOL[size]) if pool is None else tuple((s.rsplit("@", 1)[0], int(s.rsplit("@", 1)[1])) for s in pool)

    def analyze(self, subject: Subject, context: AnalysisContext) -> Outcome:
        view, device = subject.view, context.device
        d = labelled(subject).to(device)
        own = d.y.argmax(1) if d.y.is_floating_point() else d.y
        classes = int(view.num_classes or 0)
        run = RunContext(device, 0, torch.Generator(device), cache_dir=context.cache_dir)
        metrics: dict[str, float | bool] = {}
        per_class, confidences, info = [], [], {}
        for i, (spec, epochs) in enumerate(self.pool):
            model, meta = teacher_for(view, spec, epochs, "none", run)
            if meta["teacher_trained"]:
                context.misses += 1
            else:
                context.hits += 1
            with torch.no_grad():
                probs = torch.softmax(model(d.x), 1)
                test_pred = torch.cat([model(subject.test.x[j : j + 2048]).argmax(1) for j in range(0, len(subject.test.x), 2048)])
            hit = (probs.argmax(1) == own).float()
            name = f"{spec}@{epochs}"
            metrics[f"recognition_acc@{name}"] = float(hit.mean())
            metrics[f"pool_test_acc@{name}"] = float((test_pred == subject.test.y).float().mean())
            confidences.append(float(probs.gather(1, own[:, None]).mean()))
            per_class.append(torch.stack([hit[own == c].mean() if (own == c).any() else torch.tensor(float("nan"), device=device)
                                          for c in range(classes)]))
            info[name] = {"cache": meta["teacher_cache"], "val_accuracy": meta["teacher_val_accuracy"]}
            context.progress(f"recognition {subject.label}", i + 1, len(self.pool))
        metrics["recognition_acc_mean"] = statistics.fmean(metrics[f"recognition_acc@{s}@{e}"] for s, e in self.pool)
        metrics["own_class_confidence"] = statistics.fmean(confidences)
        return Outcome(metrics, {"per_class": torch.stack(per_class)}, {"pool": [f"{s}@{e}" for s, e in self.pool], "models": info})
