"""Label regimes (docs/labels.md): read off the artifact, every label tensor and teacher counted,
a teacher only ever rebuilt from the artifact's own tensors, the reference trained in the row's regime."""
from __future__ import annotations

import pytest
import torch

from ddbench import Artifact, Budget
from ddbench.budget.artifact import admission_problems, admit
from ddbench.budget.labels import BANK_LOGITS, BANK_VIEWS, build_teacher, data_scalars, kd_loss, regime, skeleton, teacher_tensors
from ddbench.contracts.recipe import Recipe
from ddbench.ops.augment import crop_views, random_views
from ddbench.ops.training import train_classifier
from ddbench.plugins import instantiate
from ddbench.results.leaderboard import TEACHER_ROW, write
from ddbench.results.store import read_results
from ddbench.run.suite import DistillerEntry, Suite, TaskEntry

SPEC = "convnet:width=8,depth=2,norm=batchnorm"  # a small BatchNorm teacher: fast on CPU
TEACHER_OPTIONS = {"labels": "teacher", "teacher": SPEC, "squeeze_epochs": 20, "squeeze_augment": "none"}
SHORT = {"epochs": 5}  # digits' evaluation nets (and the random reference) train 5 epochs here, not the quick profile's 150


@pytest.fixture(scope="module")
def view(digits):
    return digits[1]


@pytest.fixture(scope="module")
def teacher(manager, view):
    return skeleton(SPEC, view, manager.learners)


def convnet():
    from ddbench_learners.convnet import ConvNetLearner

    return ConvNetLearner


def teacher_artifact(view, teacher, n=10):
    return Artifact({"x": view.train.x[:n].clone(), **teacher_tensors(teacher)}, {"teacher": SPEC})


def test_the_regime_is_read_off_the_tensors(view, teacher):
    x = view.train.x[:4]
    assert regime({"x": x, "y": torch.zeros(4, dtype=torch.long)}, {}) == "hard"
    assert regime({"x": x, "y": torch.full((4, 10), 0.1)}, {}) == "soft"
    assert regime({"x": x, **teacher_tensors(teacher)}, {"teacher": SPEC}) == "teacher"
    assert regime({"x": x, BANK_LOGITS: torch.zeros(4, 2, 10), BANK_VIEWS: torch.zeros(4, 2, 5)}, {}) == "soft-bank"


def test_a_teacher_is_counted_and_charged_on_top_of_the_data_budget(view, teacher):
    artifact = teacher_artifact(view, teacher)
    admitted, storage = admit(artifact, view, Budget.parse("ipc=1"), "t", convnet())
    weights = sum(t.numel() for t in teacher.state_dict().values())
    assert storage.scalars == 10 * 64 + weights
    assert {k for k in storage.by_tensor if k.startswith("teacher.")} == {f"teacher.{k}" for k in teacher.state_dict()}
    assert data_scalars(admitted.tensors, admitted.recipe) == 10 * 65  # the inputs plus one label per row
    too_many = Artifact({"x": view.train.x[:11].clone(), **teacher_tensors(teacher)}, {"teacher": SPEC})
    (problem,) = admission_problems(too_many, view, Budget.parse("ipc=1"), "t", convnet())
    assert problem.rule == "within-budget" and "label tensors charged on top" in problem.message


@pytest.mark.parametrize("change, message", [
    ("undeclared", "stores 16 teacher.* tensors and declares no teacher"),
    ("no weights", "declares teacher 'convnet:width=8,depth=2,norm=batchnorm' but stores none of its weights"),
    ("missing", "missing, 0 unknown; it lacks teacher.classifier.bias"),
    ("reshaped", "teacher.classifier.bias is float32 (11,)"),
    ("unknown learner", "its teacher 'nosuch' cannot be built"),
])
def test_a_teacher_that_is_not_stored_whole_cannot_be_expressed(view, teacher, change, message):
    tensors, recipe = {"x": view.train.x[:10].clone(), **teacher_tensors(teacher)}, {"teacher": SPEC}
    if change == "undeclared":
        recipe = {}
    elif change == "no weights":
        tensors = {"x": tensors["x"], "y": view.train.y[:10].clone()}
    elif change == "missing":
        del tensors["teacher.classifier.bias"]
    elif change == "reshaped":
        tensors["teacher.classifier.bias"] = torch.zeros(11)
    else:
        recipe = {"teacher": "nosuch"}
    problems = admission_problems(Artifact(tensors, recipe), view, None, "t", convnet())
    assert any(message in p.message for p in problems), [p.message for p in problems]


def test_a_learner_without_the_regime_refuses_the_artifact(view, teacher, manager):
    from ddbench.contracts.interfaces import Learner

    class HardOnly(convnet()):
        label_regimes = ("hard",)

    assert issubclass(HardOnly, Learner)
    (problem, *_) = admission_problems(teacher_artifact(view, teacher), view, None, "t", HardOnly)
    assert "teacher label regime, which learner 'convnet' cannot train in" in problem.message


def test_the_rebuilt_teacher_is_the_stored_one(view, teacher, manager):
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.01)
    rebuilt = build_teacher(teacher_tensors(teacher), SPEC, view, manager.learners, "cpu")
    x = view.train.x[:5]
    assert torch.equal(rebuilt(x), teacher.eval()(x)) and not rebuilt.training


def test_bank_views_crop_and_flip():
    x = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4)
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0, 1.0]])
    out = crop_views(x, whole)
    assert torch.allclose(out[0], x[0], atol=1e-5) and torch.allclose(out[1], x[1].flip(-1), atol=1e-5)
    quarter = crop_views(x, torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.0]] * 2))
    assert float(quarter[0].mean()) == pytest.approx(float(x[0, 0, 2:, 2:].mean()), abs=1.0)  # the bottom-right quarter, resized
    views = random_views(50, 3, torch.Generator().manual_seed(0))
    assert views.shape == (50, 3, 5) and bool((views[..., 0] + views[..., 2] <= 1 + 1e-6).all())


def test_kd_loss_is_zero_at_the_teacher_and_positive_elsewhere():
    t = torch.randn(6, 10)
    assert float(kd_loss(t, t, 30.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(torch.randn(6, 10), t, 30.0)) > 0


def test_distillation_training_is_seeded_and_moves_towards_the_teacher(view, teacher, manager):
    artifact = teacher_artifact(view, teacher, 20)
    artifact.teacher = build_teacher(artifact.tensors, SPEC, view, manager.learners, "cpu")
    learner = instantiate(convnet(), {}, "quick")
    recipe = Recipe(epochs=20, optimizer="adamw", lr=1e-3, weight_decay=0.01, schedule="cosine", temperature=4.0)

    def fit(seed):
        model = learner.build(view, 0)
        return learner.fit(model, artifact, recipe, torch.Generator().manual_seed(seed))

    a, b = fit(1), fit(1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    x = view.val.x[:200]
    with torch.no_grad():
        before = float(kd_loss(learner.build(view, 0)(x), artifact.teacher(x), 4.0))
        assert float(kd_loss(a.eval()(x), artifact.teacher(x), 4.0)) < before


def test_a_soft_label_bank_trains_from_its_views(view):
    n, v = 20, 3
    x = view.train.x[:n].clone()
    bank = Artifact({"x": x, BANK_LOGITS: torch.randn(n, v, 10), BANK_VIEWS: random_views(n, v, torch.Generator().manual_seed(0))},
                    {"labels": "class-balanced"})
    learner = instantiate(convnet(), {}, "quick")
    admitted, storage = admit(bank, view, Budget.parse("ipc=2"), "t", convnet())
    assert storage.scalars == n * 64 + n * v * 15
    model = train_classifier(learner.build(view, 0), admitted, Recipe(epochs=3, optimizer="adamw", lr=1e-3, temperature=2.0),
                             torch.Generator().manual_seed(0))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    broken = Artifact({**bank.tensors, BANK_VIEWS: bank.tensors[BANK_VIEWS] + 1.0})
    assert any("crop inside the image" in p.message for p in admission_problems(broken, view, None, "t", convnet()))


@pytest.mark.slow
def test_the_reference_is_trained_in_the_rows_regime(harness, tmp_path):
    suite = Suite("labels", [TaskEntry("digits", [Budget.parse("ipc=1")], SHORT)],
                  [DistillerEntry("random"), DistillerEntry("random", dict(TEACHER_OPTIONS))], "quick", 2, [0])
    hard, taught = harness.run(suite)
    assert hard.status == taught.status == "ok", (hard.error, taught.error)
    assert (hard.regime, hard.reference_regime, taught.regime, taught.reference_regime) == ("hard", "hard", "teacher", "teacher")
    # the same images: trained from the teacher, the reference is a different number than with hard labels
    assert taught.random_ref == pytest.approx(taught.mean) and hard.random_ref == pytest.approx(hard.mean)
    assert taught.random_ref != hard.random_ref
    weights = taught.extra["teacher_params"]
    assert taught.stored_params == 10 * 64 + weights and taught.by_tensor["x"] == 640
    assert sum(v for k, v in taught.by_tensor.items() if k.startswith("teacher.")) == weights
    assert taught.extra["teacher_free"] > 10 and taught.extra["teacher_accuracy"] > 50
    from ddbench.results.records import result_to_dict

    records = [{**result_to_dict(r), "key": r.cell.key(), "provenance": {}, "finished_at": "now"} for r in (hard, taught)]
    write(records, tmp_path)
    text = (tmp_path / "digits.md").read_text()
    assert "## Budget ipc=1, hard labels" in text and "## Budget ipc=1, a stored teacher" in text
    assert hard.deviations == [] and [d["aspect"] for d in taught.deviations] == ["labels"]  # recorded per cell
    assert "| random (labels=teacher" in text and "[^1]" in text and "## Departures from the official code" in text
    assert "[^1]: **random**: labels: official the chosen images with their hard labels" in text
    assert f"| ref    | {TEACHER_ROW}" in text and "teacher_free" in text
    assert (tmp_path / "digits.csv").read_text().count(",teacher,teacher") == 1
    assert [r["regime"] for r in read_results(tmp_path / "results.json").records] == ["hard", "teacher"]
    assert sorted(r.regime for r in read_results(tmp_path / "digits.csv").rows()) == ["hard", "teacher"]  # CSVs keep it


@pytest.mark.parametrize("name", ["sre2l", "dwa"])
def test_sre2l_and_dwa_pass_the_conformance_kit(manager, tmp_path, name):
    from ddbench.testing import check_distiller, tiny_classification

    options = {"teacher": SPEC, "squeeze_epochs": 2, "steps": 3, "views": 2}
    report = check_distiller(manager.distillers.get(name), options, tasks=[tiny_classification()], cache_dir=tmp_path)
    assert report.passed and report.cases


@pytest.mark.parametrize("form, kind", [("teacher", "teacher"), ("bank", "soft-bank"), ("soft", "soft"), ("hard", "hard")])
def test_sre2l_relabels_into_each_regime(manager, view, tmp_path, form, kind):
    from ddbench import RunContext

    distiller = instantiate(manager.distillers.get("sre2l"), {"teacher": SPEC, "squeeze_epochs": 2, "steps": 3, "views": 2,
                                                              "labels": form}, "quick")
    learner = instantiate(convnet(), {}, "quick")
    context = RunContext(torch.device("cpu"), 0, torch.Generator().manual_seed(0), cache_dir=tmp_path)
    artifact = distiller.distill(view, Budget.parse("ipc=1"), learner, context)
    _, storage = admit(artifact, view, Budget.parse("ipc=1"), "sre2l", convnet())
    assert regime(artifact.tensors, artifact.recipe) == kind
    assert storage.scalars == sum(t.numel() for t in artifact.tensors.values())
    assert artifact.x.shape == (10, *view.input_shape) and torch.isfinite(artifact.x).all()  # recovered from noise


@pytest.mark.slow
def test_distillation_regimes_stay_off_the_common_board(harness):
    suite = Suite("labels", [TaskEntry("digits", [Budget.parse("ipc=1")], SHORT)], [DistillerEntry("random", dict(TEACHER_OPTIONS))],
                  "quick", 2, [0], protocols=["native", "common"])
    native, common = harness.run(suite)
    assert native.status == "ok" and common.status == "skipped"
    assert "teacher label regime" in common.error and "native board" in common.error


def test_a_teacher_larger_than_the_budgets_bytes_crosses_the_worker(harness):
    # ResNet-18 at width 16 is 2.8 MB of float32, beyond the ~1 MB the worker reads for ipc=1 on digits
    options = {**TEACHER_OPTIONS, "teacher": "resnet:depth=18,width=16", "squeeze_epochs": 1}
    suite = Suite("labels", [TaskEntry("digits", [Budget.parse("ipc=1")], SHORT)], [DistillerEntry("random", options)], "quick", 1, [0])
    (result,) = harness.run(suite)
    assert result.status == "ok", result.error
    assert result.extra["teacher_params"] > 700_000 and result.stored_params == 640 + result.extra["teacher_params"]


def test_dwa_without_its_perturbation_is_sre2l(manager, view, tmp_path):
    from ddbench import RunContext

    options = {"teacher": SPEC, "squeeze_epochs": 2, "steps": 3}
    learner = instantiate(convnet(), {}, "quick")

    def distil(name, extra):
        distiller = instantiate(manager.distillers.get(name), {**options, **extra}, "quick")
        context = RunContext(torch.device("cpu"), 0, torch.Generator().manual_seed(0), cache_dir=tmp_path)
        return distiller.distill(view, Budget.parse("ipc=1"), learner, context).x

    sre2l = distil("sre2l", {"init": "real", "r_var": 11.0})  # DWA's initialisation and loss weights
    assert torch.equal(distil("dwa", {"rho": 0.0}), sre2l)
    assert not torch.equal(distil("dwa", {}), sre2l)
    assert not torch.equal(distil("sre2l", {}), sre2l)  # SRe2L's own form starts from noise


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sre2l", "dwa"])
def test_sre2l_and_dwa_pass_the_conformance_kit_in_their_quick_profile(manager, tmp_path, name):
    from ddbench.testing import check_distiller

    report = check_distiller(manager.distillers.get(name), cache_dir=tmp_path)  # ResNet-18 width 16 teacher, 100 steps
    assert report.passed and report.cases
