"""Analyses of distilled data (docs/analyses.md): the probe trainer, the four built-in analyses at
tiny sizes, the cache, the store table and the command."""
from __future__ import annotations

import functools
import math
import time
import types

import pytest
import torch

from ddbench import Artifact, hookimpl
from ddbench.analysis.runner import AnalysisContext, analyze, artifact_files, build_analyses, run_analysis
from ddbench.budget.artifact import save
from ddbench.cli import main
from ddbench.contracts.analysis import Analysis, Metric, Outcome, Subject
from ddbench.contracts.interfaces import Split
from ddbench.ops import probe
from ddbench.ops.hessian import exact_trace, hessian_trace, hutchinson_trace, module_loss
from ddbench.ops.probe import class_draw, fit_full_batch, fit_weighted
from ddbench.plugins import PluginManager
from ddbench.results.store import ResultStore
from ddbench_analyses import agreement as agreement_module
from ddbench_analyses import influence, recognition
from ddbench_analyses.agreement import EarlyAgreement, curvature
from ddbench_analyses.influence import PointwiseInfluence, summarise
from ddbench_analyses.mixing import Mixing
from ddbench_analyses.recognition import OFFICIAL, OURS, POOL, Recognition, member

LEARNER = {"width": 8, "depth": 2}


def learner():
    from ddbench_learners.convnet import ConvNetLearner

    return ConvNetLearner(**LEARNER)


def subject(digits, n_per_class=2, test=None):
    task, view, full_test = digits
    idx = class_draw(view.train.y, n_per_class, torch.Generator().manual_seed(0))
    artifact = Artifact({"x": view.train.x[idx].clone(), "y": view.train.y[idx].clone()})
    return Subject("k" * 16, "digits / random", artifact, task, view, test or full_test, learner(), "convnet:width=8,depth=2",
                   task.recipe("quick"), "random")


def test_class_draws_are_nested_and_class_balanced(digits):
    y = digits[1].train.y
    small, large = class_draw(y, 2, torch.Generator().manual_seed(3)), class_draw(y, 5, torch.Generator().manual_seed(3))
    assert torch.equal(large[:20], small)
    assert torch.bincount(y[large], minlength=10).tolist() == [5] * 10


SHORT_STEPS = 30  # of the probe trainer's full-batch fits, in tests that check what an analysis fits on, not for how long


@pytest.fixture
def short_fits(monkeypatch):
    """The probe trainer's full-batch fits (the paper's 300 steps: ``probe.PAPER_STEPS``) cut to
    :data:`SHORT_STEPS` wherever an analysis calls them: the protocol fits, the subset pool, the
    leave-one-out ensemble. The code path is the same at any length."""
    short = functools.partial(probe.fit_weighted, steps=SHORT_STEPS)
    for module in (probe, agreement_module, influence):
        monkeypatch.setattr(module, "fit_weighted", short)


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_the_leave_one_out_ensemble_equals_sequential_leave_one_out_runs(digits, float64, short_fits):
    """In float64, where the vmapped convolutions' other summation order does not grow over the
    steps into the 1e-3 differences it reaches in float32 (300 steps)."""
    s = subject(digits, 1)
    s.test = Split(s.test.x.double(), s.test.y)
    d = Artifact({"x": s.artifact.x.double(), "y": s.artifact.y})
    losses, _ = PointwiseInfluence(repeats=1).loo_losses(s, d, seed=7)
    n = len(d.x)

    def sequential(keep):
        model = s.learner.build(s.view, 7)
        fit_full_batch(model, d.x[keep], d.y[keep], steps=SHORT_STEPS)
        return torch.nn.functional.cross_entropy(s.learner.predict(model, s.test.x), s.test.y, reduction="none")
    assert torch.allclose(losses[0], sequential(torch.arange(n)), atol=1e-9)
    for i in (0, 4, n - 1):
        assert torch.allclose(losses[i + 1], sequential(torch.cat([torch.arange(i), torch.arange(i + 1, n)])), atol=1e-9), i
    assert not torch.allclose(losses[1], losses[0], atol=1e-3)  # leaving a point out changes the model


@pytest.mark.slow
def test_exact_hessian_trace_of_the_two_layer_network_equals_its_closed_form():
    """MSE of f(x) = alpha + beta^T x + sum_j a_j relu(w_j^T x + b_j) in (a, W, b): relu'' = 0 almost
    everywhere, so tr H = (2/n) sum_ij [relu(w_j^T x_i + b_j)^2 + a_j^2 1(w_j^T x_i + b_j > 0) (|x_i|^2 + 1)]."""
    from ddbench_theory.two_layer import TwoLayer

    g = torch.Generator().manual_seed(0)
    n, d = 40, 6
    model = TwoLayer(d, 8, seed=3)
    x, y = torch.randn(n, d, generator=g), torch.randn(n, generator=g)
    loss, weights = module_loss(model, x, lambda out: (out - y) ** 2, names=["a", "W", "b"])
    pre = x @ model.W.T + model.b
    closed = 2 / n * (pre.relu().pow(2).sum() + ((pre > 0) * model.a.pow(2) * (x.pow(2).sum(1, keepdim=True) + 1)).sum())
    assert exact_trace(loss, weights, chunk=7) == pytest.approx(float(closed), rel=1e-5)
    assert hessian_trace(loss, weights, "auto", g) == (pytest.approx(float(closed), rel=1e-5), "exact")
    estimate, probes = hutchinson_trace(loss, weights, torch.Generator().manual_seed(1), max_probes=400, rtol=0)
    assert probes == 400 and estimate == pytest.approx(float(closed), rel=0.1)


@pytest.mark.slow
def test_hutchinson_trace_estimates_the_exact_one_and_leaves_batchnorm_statistics_alone(digits):
    from ddbench_learners.convnet import ConvNetLearner

    view = digits[1]
    model = ConvNetLearner(width=2, depth=1, norm="batchnorm").build(view, 0)
    x, y = view.train.x[:20], view.train.y[:20]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, weights = module_loss(model.train(), x, lambda out: torch.nn.functional.cross_entropy(out, y, reduction="none"))
    exact = exact_trace(loss, weights)
    estimate, _ = hutchinson_trace(loss, weights, torch.Generator().manual_seed(0), max_probes=60, rtol=0)
    assert estimate == pytest.approx(exact, rel=0.15) and exact > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="no weights named nope"):
        module_loss(model, x, lambda out: out.sum(1), names=["nope"])


def test_weighted_ensemble_falls_back_to_sequential_for_batchnorm(digits):
    from ddbench_learners.convnet import ConvNetLearner

    view = digits[1]
    bn = ConvNetLearner(width=4, depth=1, norm="batchnorm")
    x, y = view.train.x[:12], view.train.y[:12]
    models = [bn.build(view, 1), bn.build(view, 1)]
    w = torch.ones(2, 12)
    w[1, :6] = 0
    assert fit_weighted(models, x.expand(2, *x.shape), y.expand(2, 12), w, steps=5).startswith("sequential")
    ref = fit_full_batch(bn.build(view, 1), x[6:], y[6:], steps=5)
    assert torch.allclose(bn.predict(models[1], x), bn.predict(ref, x), atol=1e-5)


def test_influence_summaries_on_a_hand_made_matrix():
    own = torch.tensor([0, 0, 1])
    test_y = torch.tensor([0] * 9 + [1] * 9)
    influence = torch.zeros(3, 18)
    influence[0, :9] = 1.0  # helps its own class only
    influence[1, :9] = 1.0  # the same nine: fully redundant with point 0
    influence[2, 9:] = -1.0  # harms its own class
    m = summarise(influence, own, test_y)
    assert m["self_class_fraction@9"] == pytest.approx(2 / 3)
    assert m["harmful_points"] == 1
    assert m["redundancy"] == 1.0
    assert m["own_class_influence"] == pytest.approx((1 + 1 - 1) / 3)


def test_mixing_reports_curves_against_the_random_baseline(digits, short_fits):
    out = Mixing(repeats=1, k_grid=[0, 2]).analyze(subject(digits), AnalysisContext(torch.device("cpu")))
    assert set(out.metrics) >= {"acc@0", "acc@2", "acc_base@0", "harm@2", "gap@2", "monotone", "k_converge", "pixel_w1"}
    assert out.metrics["acc@0"] == out.metrics["acc_base@0"] or out.metrics["gap@0"] != 0
    assert out.tensors["curves"].shape == (2, 3)


def test_the_paper_pool_trains_its_convnets_with_the_official_recipe(digits, tmp_path, monkeypatch):
    assert [r for _, _, r in POOL["paper"]] == [OFFICIAL, OFFICIAL, OURS, OURS]  # the ResNets were checkpoints: ours
    assert {r for _, _, r in POOL["ci"]} == {OURS}
    assert member("convnet@40") == ("convnet", 40, OFFICIAL) and member("convnet@4@ours") == ("convnet", 4, OURS)
    with pytest.raises(ValueError, match="spec@epochs"):
        member("convnet@4@adam")
    steps: list[tuple[float, float, float, bool]] = []
    batches: list[int] = []

    class SpySGD(torch.optim.SGD):
        def step(self, closure=None):
            g = self.param_groups[0]
            steps.append((g["lr"], g["momentum"], g["weight_decay"], g["nesterov"]))
            return super().step(closure)
    monkeypatch.setattr(torch.optim, "SGD", SpySGD)
    real_train_steps = recognition.train_steps

    def spy_train_steps(model, x, y, n, batch_size, generator, **kw):
        model.register_forward_pre_hook(lambda _m, args: batches.append(len(args[0])))
        return real_train_steps(model, x, y, n, batch_size, generator, **kw)
    monkeypatch.setattr(recognition, "train_steps", spy_train_steps)
    s = subject(digits)
    context = AnalysisContext(torch.device("cpu"), tmp_path)
    out = Recognition(pool=["convnet:width=8,depth=2@2"]).analyze(s, context)
    n = len(s.view.train)
    assert len(steps) == 2 * math.ceil(n / 256) and batches == [min(256, n - j * 256) for j in range(math.ceil(n / 256))] * 2
    assert set(steps) == {(0.01, 0.9, 0, False)}  # SGD 0.01, momentum 0.9, constant lr, no weight decay
    assert out.info["models"]["convnet:width=8,depth=2@2"]["recipe"] == OFFICIAL and 0 <= out.metrics["recognition_acc_mean"] <= 1
    Recognition(pool=["convnet:width=8,depth=2@2"]).analyze(s, context)
    assert (context.hits, context.misses, len(steps)) == (1, 1, 2 * math.ceil(n / 256))  # cached


TINY = {"runs": 2, "subset_models": 4, "band": 0.5}


@pytest.mark.slow
def test_early_agreement_matches_on_validation_never_test_and_reuses_its_caches(digits, tmp_path, short_fits):
    s = subject(digits)
    context = AnalysisContext(torch.device("cpu"), tmp_path)
    analysis = EarlyAgreement(repeats=1, **TINY)
    start = time.perf_counter()
    first = analysis.analyze(s, context)
    cold = time.perf_counter() - start
    assert (context.hits, context.misses) == (0, 3)
    test = s.test
    scrambled = Split(test.x, test.y[torch.randperm(len(test.y), generator=torch.Generator().manual_seed(0))])
    start = time.perf_counter()
    second = analysis.analyze(subject(digits, test=scrambled), context)
    warm = time.perf_counter() - start
    assert (context.hits, context.misses) == (3, 3)
    assert warm < cold
    for key in ("matched_step_mean", "n_subset_matched", "distilled_val_acc", "agreement_early"):
        assert second.metrics[key] == first.metrics[key], key  # chosen on validation: test labels change nothing
    assert second.metrics["acc_distilled"] != first.metrics["acc_distilled"]  # test only measures
    assert -1 <= first.metrics["steps_to_fit_distilled"]
    assert first.tensors["hessian_steps"].tolist() == [0, 10, 20, 30]  # every 10th iteration of the 38-step run (ci)
    assert torch.equal(second.tensors["hessian_real"], first.tensors["hessian_real"])  # the cached real curve
    assert first.metrics["hessian_trace_distilled_peak"] > 0 and first.info["hessian"] == "hutchinson"


def test_trace_divergence_is_the_first_checkpoint_where_the_smoothed_trace_leaves_the_band():
    steps = torch.tensor([0, 10, 20, 30])
    real = torch.tensor([100.0, 100.0, 100.0, 100.0])
    m = curvature({"steps": steps, "distilled": torch.tensor([100.0, 100.0, 180.0, 400.0]), "real": real})
    assert m["trace_divergence_step"] == 20  # smoothed with 0.9 ** 10 per gap: 100, 100, 152.1 (> 120)
    assert m["hessian_trace_distilled_peak"] == 400 and m["hessian_trace_real_end"] == 100
    assert curvature({"steps": steps, "distilled": real * 1.1, "real": real})["trace_divergence_step"] == -1
    rising = torch.tensor([1.0, 100.0, 200.0, 300.0])  # near zero at initialisation: not compared there
    near = {"steps": steps, "distilled": torch.tensor([-20.0, 110.0, 190.0, 320.0]), "real": rising}
    assert curvature(near)["trace_divergence_step"] == -1


class Broken(Analysis):
    name = "broken"
    metrics = (Metric("x", "unit", True),)

    def analyze(self, subject, context):
        raise RuntimeError("this analysis always fails")


class Undeclared(Analysis):
    name = "undeclared"
    metrics = (Metric("x", "unit", True),)

    def analyze(self, subject, context):
        return Outcome({"y": 1.0})


def saved_artifact(digits, folder):
    s = subject(digits)
    cell = {"task": "digits", "task_options": {}, "profile": "quick", "learner": "convnet", "learner_options": LEARNER,
            "distiller": "random", "budget": "ipc=2", "seed": 0, "protocol": "native"}
    return save(s.artifact, folder / "digits-random-k", {"cell": cell, "key": "cellkey", "recipe": s.recipe.as_dict()})


def test_a_broken_analysis_fails_only_its_row(manager, digits, tmp_path, short_fits):
    extra = PluginManager()
    extra.load_entrypoints()
    extra.add(types.SimpleNamespace(ddbench_register_analyses=hookimpl(lambda register: [register(Broken), register(Undeclared)])), "bad")
    path = saved_artifact(digits, tmp_path)
    built = build_analyses(extra, ["broken", "undeclared", "mixing:repeats=1,k_grid=[0]"])
    with ResultStore(tmp_path / "s.sqlite") as store:
        rows = analyze(extra, artifact_files([tmp_path]), built, store, AnalysisContext(torch.device("cpu"), tmp_path), tmp_path / "out")
        stored = {r.spec: r for r in store.analysis_rows()}
    assert [r.status for r in rows] == ["failed", "failed", "ok"]
    assert "always fails" in stored["broken"].error and "does not declare" in stored["undeclared"].error
    ok = stored["mixing:k_grid=[0],repeats=1"]
    assert ok.key == "cellkey" and ok.declared["acc@0"]["higher_is_better"] is True and path.is_file()
    with ResultStore(tmp_path / "s.sqlite") as store:  # a rerun skips finished rows
        assert analyze(extra, artifact_files([tmp_path]), built[2:], store, AnalysisContext(torch.device("cpu"), tmp_path),
                       tmp_path / "out") == []


def test_a_teacher_regime_artifact_is_skipped_with_the_reason(digits):
    s = subject(digits)
    s.artifact = Artifact({"x": s.artifact.x, "teacher.w": torch.zeros(1)}, {"teacher": "mlp"})
    row = run_analysis(Mixing(repeats=1, k_grid=[0]), "mixing", s, AnalysisContext(torch.device("cpu")))
    assert row.status == "skipped" and "teacher regime" in row.error


@pytest.mark.parametrize("argv, message", [
    (["analyze", "--analysis", "mixng", "x"], "mixing"),
    (["analyze", "--analysis", "mixing:size=huge", "x"], "size must be one of"),
    (["analyze", "--analysis", "mixing", "nothere.txt"], "not an artifact file"),
])
def test_bad_analyze_input_is_one_line_exit_2(argv, message, capsys, tmp_path):
    assert main([*argv, "--store", str(tmp_path / "s.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_the_built_in_analyses_are_listed(capsys):
    assert main(["ls", "analyses"]) == 0
    out = capsys.readouterr().out
    for name in ("mixing", "recognition", "early_agreement", "pointwise_influence"):
        assert name in out


def test_ddbench_plugins_names_the_analyses_kind_in_its_plural(capsys):
    assert main(["plugins"]) == 0
    assert "analyses: mixing, recognition, early_agreement, pointwise_influence" in capsys.readouterr().out
