"""The streamed passes of the theory plugin (docs/theory-scale.md) and ``ddbench theory-measure``.

Tiny sizes (d = 8, r = 2, L = 16, n = 3000, chunks of 512 rows), CPU only: every streamed pass
equals its in-memory twin of ``ddbench_theory.two_layer`` on the concatenated chunks, the rows and
results do not depend on the chunk size, and the command runs end to end.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from ddbench.cli import main
from ddbench.contracts.interfaces import Artifact, RunContext
from ddbench.contracts.recipe import Recipe
from ddbench_theory.measure import gradient_flop, gram_flop
from ddbench_theory.stage1 import match_gradients
from ddbench_theory.streaming import (
    StreamedMultiIndex,
    chunk_seed,
    label_moments,
    real_gradient,
    streamed_moments,
    streamed_r2,
    streamed_teacher,
    tf32_off,
)
from ddbench_theory.task import MultiIndex
from ddbench_theory.two_layer import (
    TwoLayer,
    TwoLayerLearner,
    feature_moments,
    first_layer_grad,
    preprocess_labels,
    reinit_biases,
    symmetric_init,
)

D, R, WIDTH, N, CHUNK = 8, 2, 16, 3000, 512


def source(chunk: int = CHUNK, **kw) -> StreamedMultiIndex:
    return StreamedMultiIndex(D, R, n=N, chunk=chunk, n_test=1000, seed=3, block=128, **kw)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


@pytest.fixture(scope="module")
def data():
    """The source, its materialised train rows, alpha and beta, the preprocessed labels and theta0."""
    src = source()
    x, y = src.materialise()
    alpha, beta = label_moments(src)
    y_pre = y - alpha - x @ beta
    return src, x, y, alpha, beta, y_pre, symmetric_init(D, WIDTH, 5)


# -- the source --------------------------------------------------------------------------------
def test_chunks_are_regenerated_identically():
    src, again = source(), source()
    assert src.num_chunks() == math.ceil(N / CHUNK) == 6
    for k in (0, 3, 5):
        x1, y1 = src.chunk_at(k)
        x2, y2 = src.chunk_at(k)
        x3, y3 = again.chunk_at(k)
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(x1, x3) and torch.equal(y1, y3)
    assert len(src.chunk_at(5)[0]) == N - 5 * CHUNK
    assert not torch.equal(src.chunk_at(0)[0], src.chunk_at(1)[0])
    assert not torch.equal(src.chunk_at(0)[0][:100], src.chunk_at(0, test=True)[0][:100])
    assert not torch.equal(src.chunk_at(0)[0], StreamedMultiIndex(D, R, n=N, chunk=CHUNK, seed=4, block=128).chunk_at(0)[0])
    with pytest.raises(IndexError):
        src.chunk_at(6)


def test_seeds_and_subspace():
    seeds = {chunk_seed(s, k, stream) for s in range(3) for k in range(50) for stream in (0, 1)}
    assert len(seeds) == 300 and all(0 <= s < 2**63 for s in seeds)
    assert torch.equal(source().U, MultiIndex(d=D, r=R, seed=3, calib_device="cpu").U)  # U as the task draws it


def test_test_stream_has_noise_free_targets():
    src = source()
    x, y = src.chunk_at(1, test=True)
    assert torch.allclose(y, src.target(x)) and len(src.materialise(test=True)[0]) == 1000
    x, y = src.chunk_at(1)
    assert 0.05 < float((y - src.target(x)).std()) < 0.15  # noise 0.1 on the train rows


@pytest.mark.parametrize("chunk", [640, 1000, N])
def test_rows_do_not_depend_on_the_chunk_size(data, chunk):
    _, x, y, *_ = data
    x2, y2 = source(chunk).materialise()
    assert torch.equal(x2, x)
    assert torch.allclose(y2, y, rtol=0, atol=1e-6)


# -- each pass equals its in-memory twin on the concatenated chunks -------------------------------
def test_label_moments_equal_preprocess_labels(data):
    _, x, y, alpha, beta, y_pre, _ = data
    ref_alpha, ref_beta, ref_pre = preprocess_labels(x.double(), y.double())
    assert abs(float(alpha) - float(ref_alpha)) < 1e-7
    assert float((beta.double() - ref_beta).abs().max()) < 1e-7
    assert float((y_pre.double() - ref_pre).abs().max()) < 1e-5


def test_real_gradient_equals_first_layer_grad(data):
    src, x, _, alpha, beta, y_pre, (a, w, b) = data
    grad = real_gradient(src, a, w, b, alpha, beta)
    assert grad.shape == (WIDTH, D) and grad.dtype == torch.float32
    assert rel(grad, first_layer_grad(a, w, b, x, y_pre)) < 1e-5


@pytest.mark.parametrize("gram", ["fp32", "fp64"])
def test_streamed_moments_equal_feature_moments(data, gram):
    src, x, _, alpha, beta, y_pre, (_, w, _) = data
    b = reinit_biases(WIDTH, 5)
    c, h, q = streamed_moments(src, w, b, alpha, beta, gram)
    c0, h0, q0 = feature_moments(w, b, x, y_pre)
    assert c.dtype == h.dtype == q.dtype == torch.float64
    tol = 1e-6 if gram == "fp32" else 1e-12
    assert rel(c, c0) < tol and rel(h, h0) < tol and abs(float(q - q0)) < 1e-12 * float(q0)


def test_unknown_gram_mode_is_refused(data):
    src, _, _, alpha, beta, _, (_, w, b) = data
    with pytest.raises(ValueError, match="gram"):
        streamed_moments(src, w, b, alpha, beta, "fp16")


@pytest.mark.parametrize("chunk", [640, N])
def test_results_do_not_depend_on_the_chunk_size(data, chunk):
    src, _, _, alpha, beta, _, (a, w, b) = data
    other = source(chunk)
    alpha2, beta2 = label_moments(other)
    assert abs(float(alpha2 - alpha)) < 1e-7 and float((beta2 - beta).abs().max()) < 1e-7
    assert rel(real_gradient(other, a, w, b, alpha2, beta2), real_gradient(src, a, w, b, alpha, beta)) < 1e-5
    for got, want in zip(streamed_moments(other, w, b, alpha2, beta2), streamed_moments(src, w, b, alpha, beta)):
        assert rel(got, want) < 1e-6


def test_streamed_teacher_equals_the_in_memory_learner(data):
    """The full-data two-layer learner (data mode) on the materialised rows and the streamed teacher agree."""
    src, x, y, alpha, beta, *_ = data
    rho, lam, seed = 1.0, 1e-3, 5
    eta = rho * math.sqrt(D)
    teacher = streamed_teacher(src, WIDTH, seed, eta, lam, alpha, beta)
    recipe = Recipe(epochs=0, batch_size=0, options={"rho": rho, "ridge": lam, "init_seed": seed})
    ref = TwoLayerLearner(WIDTH).fit(TwoLayer(D, WIDTH, 0), Artifact({"x": x, "y": y}), recipe, torch.Generator())
    assert rel(teacher.W, ref.W) < 1e-5 and torch.equal(teacher.b, ref.b)
    xt, _yt = src.materialise(test=True)
    with torch.no_grad():
        assert float((teacher(xt) - ref(xt)).abs().max()) < 1e-4
    r2 = streamed_r2(src, {"teacher": teacher, "ref": ref})
    assert abs(r2["teacher"] - r2["ref"]) < 1e-5


def test_streamed_r2_equals_the_task_score(data):
    src, *_ = data
    model = streamed_teacher(src, WIDTH, 5, math.sqrt(D), 1e-3, *label_moments(src))
    xt, yt = src.materialise(test=True)
    with torch.no_grad():
        pred = model(xt).double()
    want = 1 - float(((pred - yt.double()) ** 2).mean()) / float(yt.double().var(unbiased=False))
    assert abs(streamed_r2(src, {"m": model})["m"] - want) < 1e-9


def test_tf32_off_is_scoped_and_restored():
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        with tf32_off():
            assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cuda.matmul.allow_tf32 is True
        with pytest.raises(RuntimeError), tf32_off():
            raise RuntimeError("inside")
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_stage1_compile_option_routes_the_step_through_torch_compile(monkeypatch):
    compiled = []

    def fake_compile(fn, **kw):  # records what would be compiled; no dynamo import here
        compiled.append(fn.__name__)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, D, generator=gen), torch.randn(64, generator=gen)
    run = lambda flag: match_gradients(x, y, 16, 0, 4, RunContext(torch.device("cpu"), 0, torch.Generator().manual_seed(0)),  # noqa: E731 - a one-line helper
                                       steps=5, lr=1e-2, compile=flag)
    plain = run(False)
    assert compiled == []
    assert torch.equal(run(True).x, plain.x) and sorted(compiled) == ["first_layer_grad", "matching_loss"]


def test_flop_formulas():
    assert gradient_flop(10**6, 8192, 1024) == pytest.approx(3.4e13, rel=2e-2)  # two products of 1.7e13 each
    assert gram_flop(10**6, 8192, 1024) == pytest.approx(2 * 10**6 * 8192 * (1024 + 8192))


# -- ddbench theory-measure --------------------------------------------------------------------
SMALL = ["--d", str(D), "--r", str(R), "--L", str(WIDTH), "--n", str(N), "--chunk", str(CHUNK), "--steps1", "20",
         "--steps2", "10", "--n-test", "1000", "--device", "cpu"]
STAGES = ["preprocess", "real-gradient", "stage1", "student-first-layer", "stage2-moments", "stage2", "student-fit",
          "teacher", "test-r2"]


def test_measure_runs_end_to_end(capsys, tmp_path):
    path = tmp_path / "out" / "measure.json"
    assert main(["theory-measure", *SMALL, "--json", str(path)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("stage ")]
    assert [line.split()[1] for line in lines] == STAGES
    assert all(" s  peak " in line and " MB" in line for line in lines)
    flop_lines = [line for line in lines if "FLOP/s" in line]
    assert [line.split()[1] for line in flop_lines] == ["real-gradient", "stage2-moments", "teacher"]
    assert all("peak not given" in line for line in flop_lines)
    assert "2nLd (gate) + 2nLd (product)" in out and "2nLd (features) + 2nL^2 (Gram)" in out
    assert "process-wide" in out and "student R^2" in out and "teacher R^2" in out
    result = json.loads(path.read_text())
    assert [s["name"] for s in result["stages"]] == STAGES
    assert math.isfinite(result["student_r2"]) and result["teacher_r2"] > 0.5
    assert result["stored"] == 4 * (D + 1) + D + 2 * WIDTH + 1 + D


def test_measure_reports_a_fraction_of_a_given_peak(capsys):
    assert main(["theory-measure", *SMALL, "--steps1", "2", "--steps2", "2", "--peak-tflops", "1", "--gram", "fp64"]) == 0
    out = capsys.readouterr().out
    assert out.count("of the given peak 1 TFLOP/s") == 3 and "peak not given" not in out


BAD = [
    (["--L", "15"], "--L"),
    (["--d", "8", "--r", "9"], "--r"),
    (["--link", "he9"], "--link"),
    (["--m1", "lots"], "--m1"),
    (["--chunk", "0"], "--chunk"),
    (["--n", "3", "--chunk", "3", "--m1", "4"], "--m1"),
    (["--peak-tflops", "-1"], "--peak-tflops"),
]
if not torch.cuda.is_available():
    BAD.append((["--device", "cuda"], "--device"))


@pytest.mark.parametrize(("argv", "flag"), BAD, ids=[flag + ":" + " ".join(argv) for argv, flag in BAD])
def test_bad_options_exit_2_with_one_line(capsys, argv, flag):
    assert main(["theory-measure", *SMALL[:-2], *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ddbench: error:") and flag in err
    assert "Traceback" not in err and "stage " not in captured.out
