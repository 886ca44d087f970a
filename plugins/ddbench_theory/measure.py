"""``ddbench theory-measure``: one two-stage cell end to end on streamed real data, timed stage by stage.

The real rows are never held: every pass over them regenerates its chunks
(:mod:`ddbench_theory.streaming`, docs/theory-scale.md). Stages, in order: the label
preprocessing pass (alpha, beta), the real-gradient pass at theta0, the stage-1 loop
(``match_gradients`` with the streamed gradient; its starting points come from the first chunk),
the student's first layer on S1, the stage-2 moments pass (C, h, q on the student's features),
the stage-2 loop (``fit_head_points`` with those moments), the student's fit (the unchanged
``two-layer`` learner in artifact mode on the artifact ``two-stage`` would store), the teacher
(first-layer step on all n rows, bias re-initialisation, ridge head from one more moments pass)
and test R^2 of both on fresh points with noise-free targets.

Each stage prints its seconds and peak memory (CUDA: ``torch.cuda.max_memory_allocated``, reset
at the start of every stage; CPU: the process-wide resident-set peak so far, which cannot be
reset), and the gradient and Gram passes their achieved FLOP/s: 2nLd (gate) + 2nLd (product) for
the gradient, 2nLd (features) + 2nL^2 (Gram) per moments pass. ``--peak-tflops X`` adds the
fraction of a peak X that the caller supplies (no vendor figure is built in). The GPU cell of
docs/theory.md §8::

    ddbench theory-measure --d 1024 --r 2 --L 8192 --n 1000000 --steps1 2000 --steps2 0 --device cuda
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ddbench.contracts.hookspecs import Command
from ddbench.contracts.interfaces import RunContext
from ddbench.contracts.recipe import Recipe
from ddbench.errors import SuiteError
from ddbench.ops.device import resolve_device
from ddbench_theory.distiller import FirstStage, TwoStage, artifact_size, resolve_size
from ddbench_theory.stage1 import match_gradients
from ddbench_theory.streaming import (
    DEFAULT_CHUNK,
    GRAM_MODES,
    StreamedMultiIndex,
    label_moments,
    real_gradient,
    streamed_moments,
    streamed_r2,
)
from ddbench_theory.task import LINKS
from ddbench_theory.two_layer import TwoLayer, TwoLayerLearner, reinit_biases, ridge_from_moments

GRADIENT_FORMULA = "2nLd (gate) + 2nLd (product)"
GRAM_FORMULA = "2nLd (features) + 2nL^2 (Gram)"


def gradient_flop(n: int, width: int, d: int) -> float:
    return 4.0 * n * width * d


def gram_flop(n: int, width: int, d: int) -> float:
    return 2.0 * n * width * d + 2.0 * n * width * width


@dataclass
class StageTime:
    name: str
    seconds: float
    peak_mb: float
    flop: float | None = None
    formula: str | None = None

    @property
    def tflops(self) -> float | None:
        return None if self.flop is None or self.seconds <= 0 else self.flop / self.seconds / 1e12


class Meter:
    """Times stages (CUDA: synchronised before and after) and records their peak memory; prints a line per stage."""

    def __init__(self, device: torch.device, peak_tflops: float | None, out=None):
        self.device, self.cuda, self.peak_tflops, self.out = device, device.type == "cuda", peak_tflops, out or sys.stdout
        self.stages: list[StageTime] = []

    def _peak_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return rss / 2**20 if sys.platform == "darwin" else rss / 2**10

    @contextmanager
    def stage(self, name: str, flop: float | None = None, formula: str | None = None) -> Iterator[None]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize(self.device)
        st = StageTime(name, time.perf_counter() - start, self._peak_mb(), flop, formula)
        self.stages.append(st)
        print(self.line(st), file=self.out, flush=True)

    def fraction(self, st: StageTime) -> float | None:
        return None if st.tflops is None or self.peak_tflops is None else st.tflops / self.peak_tflops

    def line(self, st: StageTime) -> str:
        text = f"stage {st.name:<20} {st.seconds:10.3f} s  peak {st.peak_mb:10.1f} MB"
        if st.flop is not None:
            frac = self.fraction(st)
            share = "peak not given" if frac is None else f"{100 * frac:.3g}% of the given peak {self.peak_tflops:g} TFLOP/s"
            text += f"  {st.flop:.3e} FLOP [{st.formula}]  {st.tflops:.3g} TFLOP/s  {share}"
        return text


def _bad(message: str) -> SuiteError:
    return SuiteError(message)


def check(args: argparse.Namespace) -> tuple[torch.device, int, int]:
    """Validate the options (one-line errors naming the option and the fix); returns (device, m1, m2)."""
    if args.d < 1:
        raise _bad(f"--d {args.d} must be >= 1: give the input dimension, e.g. --d 32.")
    if not 1 <= args.r <= args.d:
        raise _bad(f"--r {args.r} must lie in 1..--d ({args.d}): lower --r or raise --d.")
    if args.L < 2 or args.L % 2:
        raise _bad(f"--L {args.L} must be even and >= 2 (symmetric initialisation pairs the neurons): "
                   f"give e.g. --L {max(2, args.L + args.L % 2)}.")
    if args.link not in LINKS:
        raise _bad(f"--link {args.link!r} is unknown: use one of {', '.join(LINKS)}.")
    if args.link == "degenerate" and args.r < 3:
        raise _bad(f"--link degenerate needs --r >= 3 (got {args.r}): raise --r or pick another --link.")
    for flag, value, low in (("--n", args.n, 1), ("--chunk", args.chunk, 1), ("--n-test", args.n_test, 2),
                             ("--steps1", args.steps1, 0), ("--steps2", args.steps2, 0)):
        if value < low:
            raise _bad(f"{flag} {value} must be >= {low}: raise {flag}.")
    for flag, value in (("--lr1", args.lr1), ("--lr2", args.lr2), ("--ridge", args.ridge), ("--rho", args.rho),
                        ("--peak-tflops", args.peak_tflops)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise _bad(f"{flag} {value} must be a positive number: give e.g. {flag} 1.")
    if args.noise < 0:
        raise _bad(f"--noise {args.noise} must be >= 0: give e.g. --noise 0.1.")
    sizes = []
    for flag, spec in (("--m1", args.m1), ("--m2", args.m2)):
        try:
            sizes.append(resolve_size(int(spec) if str(spec).isdigit() else spec, args.r, args.L, flag))
        except ValueError as exc:
            raise _bad(f"{exc}".replace(f"{flag}=", f"{flag} ")) from None
    m1, m2 = sizes
    if m1 > min(args.chunk, args.n):
        raise _bad(f"--m1 {m1} exceeds the rows of the first chunk ({min(args.chunk, args.n)}), where stage 1 takes its "
                   "starting points: lower --m1 or raise --chunk/--n.")
    return resolve_device(args.device), m1, m2


def measure(args: argparse.Namespace, out=None) -> dict[str, Any]:
    """Run one cell as the module docstring describes; print the stage lines; return the numbers."""
    out = out or sys.stdout
    device, m1, m2 = check(args)
    d, r, width, n, seed = args.d, args.r, args.L, args.n, args.seed
    src = StreamedMultiIndex(d, r, args.link, args.noise, n, seed, args.chunk, device, args.n_test)
    meter = Meter(device, args.peak_tflops, out)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    memory = ("CUDA max_memory_allocated, reset at the start of each stage" if device.type == "cuda" else
              "process-wide resident-set peak since the process started (getrusage ru_maxrss), not reset per stage")
    print(f"theory-measure: d={d} r={r} L={width} n={n} link={args.link} m1={m1} m2={m2} steps1={args.steps1} "
          f"steps2={args.steps2} chunk={args.chunk} ({src.num_chunks()} chunks) n_test={args.n_test} seed={seed}", file=out)
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s); matmul TF32 "
          f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'} outside the Gram passes; Gram passes: {args.gram} "
          f"products, TF32 off, fp64 accumulation; compile stage 1: {'yes' if args.compile else 'no'}", file=out)
    print(f"peak memory: {memory}; FLOP: gradient pass {GRADIENT_FORMULA}, Gram pass {GRAM_FORMULA}", file=out, flush=True)

    init_seed = seed
    theta = TwoLayer(d, width, init_seed).to(device)
    with meter.stage("preprocess"):
        alpha, beta = label_moments(src)
    with meter.stage("real-gradient", gradient_flop(n, width, d), GRADIENT_FORMULA):
        grad = real_gradient(src, theta.a, theta.W, theta.b, alpha, beta)
        # rho: the task's default rule when not given (median ||w1_j|| = 1 on the full data; docs/theory.md §3)
        median = float((math.sqrt(d) * grad).norm(dim=1).median())
    rho = args.rho if args.rho is not None else 1.0 / max(median, 1e-12)
    eta, lam = rho * math.sqrt(d), args.ridge
    context = RunContext(device=device, seed=init_seed, generator=torch.Generator(device).manual_seed(init_seed))
    with meter.stage("stage1"):
        x_real, y_pre = src.preprocessed_chunk(0, alpha, beta)
        s1 = match_gradients(x_real, y_pre, width, init_seed, m1, context, steps=args.steps1, lr=args.lr1, g_real=grad,
                             compile=args.compile)
    with meter.stage("student-first-layer"):
        w1 = TwoStage._student_first_layer(d, width, init_seed, s1.x, s1.y, eta)
        b = reinit_biases(width, init_seed).to(device)
    with meter.stage("stage2-moments", gram_flop(n, width, d), GRAM_FORMULA):
        moments = streamed_moments(src, w1, b, alpha, beta, args.gram)
    with meter.stage("stage2"):
        first = FirstStage(s1, w1, b, alpha, beta, moments, width, init_seed, lam)
        artifact = TwoStage(steps2=args.steps2, lr2=args.lr2).second_stage(first, context, m2)
    with meter.stage("student-fit"):
        recipe = Recipe(epochs=0, batch_size=0, options={"rho": rho, "ridge": lam, **artifact.recipe["options"]})
        student = TwoLayerLearner(width).fit(TwoLayer(d, width, init_seed).to(device), artifact, recipe,
                                             torch.Generator(device).manual_seed(init_seed))
    with meter.stage("teacher", gram_flop(n, width, d), GRAM_FORMULA):
        teacher = TwoLayer(d, width, init_seed).to(device)
        teacher.alpha, teacher.beta = alpha.reshape(()), beta
        teacher.W = -eta * grad  # the first-layer step on all n rows: the gradient pass above, reused
        teacher.reinit_bias()
        c, h, _ = streamed_moments(src, teacher.W, teacher.b, alpha, beta, args.gram)
        teacher.a = ridge_from_moments(c, h, lam).float()
    with meter.stage("test-r2"):
        r2 = streamed_r2(src, {"student": student, "teacher": teacher})
    total = sum(st.seconds for st in meter.stages)
    stored = artifact_size(m1, m2, d, grid=False)
    print(f"total {total:.3f} s over {len(meter.stages)} stages; peak {max(st.peak_mb for st in meter.stages):.1f} MB", file=out)
    print(f"student R^2 {r2['student']:.4f}  teacher R^2 {r2['teacher']:.4f}  stage-1 D {s1.mismatch:.4f}  "
          f"stage-2 loss {artifact.meta['stage2_loss']:.4f}  rho {rho:.4g}  ridge {lam:g}  stored scalars {stored} "
          f"(r^2 d + L = {r * r * d + width}, full data n(d+1) = {n * (d + 1)})", file=out, flush=True)
    return {
        "config": {"d": d, "r": r, "L": width, "n": n, "link": args.link, "noise": args.noise, "m1": m1, "m2": m2,
                   "steps1": args.steps1, "steps2": args.steps2, "chunk": args.chunk, "n_test": args.n_test, "seed": seed,
                   "gram": args.gram, "compile": args.compile, "rho": rho, "ridge": lam},
        "device": str(device), "device_name": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "memory": memory, "peak_tflops": args.peak_tflops,
        "stages": [{**asdict(st), "tflops": st.tflops, "peak_fraction": meter.fraction(st)} for st in meter.stages],
        "total_s": total, "student_r2": r2["student"], "teacher_r2": r2["teacher"], "stage1_mismatch": s1.mismatch,
        "stage2_loss": artifact.meta["stage2_loss"], "stored": stored,
    }


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--d", type=int, default=32, help="input dimension (default 32)")
    parser.add_argument("--r", type=int, default=2, help="intrinsic dimension (default 2)")
    parser.add_argument("--L", type=int, default=256, help="width of the two-layer network, even (default 256)")
    parser.add_argument("--n", type=int, default=20000, help="real train rows, streamed (default 20000)")
    parser.add_argument("--link", default="he2", help=f"link function: {', '.join(LINKS)} (default he2)")
    parser.add_argument("--noise", type=float, default=0.1, help="label noise std (default 0.1)")
    parser.add_argument("--m1", default="r^2", help="stage-1 points: an integer or a size such as r^2, 2r (default r^2)")
    parser.add_argument("--m2", default="L", help="stage-2 points: an integer or a size such as L, L/2 (default L)")
    parser.add_argument("--steps1", type=int, default=500, help="stage-1 Adam steps (default 500)")
    parser.add_argument("--steps2", type=int, default=0, help="stage-2 Adam steps after the closed-form labels (default 0)")
    parser.add_argument("--lr1", type=float, default=1e-2, help="stage-1 learning rate (default 0.01)")
    parser.add_argument("--lr2", type=float, default=1e-2, help="stage-2 learning rate (default 0.01)")
    parser.add_argument("--rho", type=float, default=None,
                        help="eta_1 = rho sqrt(d) (default: the task's rule, median first-layer row norm 1 on all n rows)")
    parser.add_argument("--ridge", type=float, default=1e-3, help="ridge lambda of student and teacher (default 0.001)")
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help=f"rows per streamed chunk (default {DEFAULT_CHUNK})")
    parser.add_argument("--n-test", type=int, default=20000, help="fresh test points, noise-free targets (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="seeds U, the chunks, theta0 and the distillation (default 0)")
    parser.add_argument("--gram", choices=GRAM_MODES, default="fp32",
                        help="Gram pass precision: fp32 products (TF32 off) or fp64, both accumulated in fp64 (default fp32)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    parser.add_argument("--compile", action="store_true", help="torch.compile the stage-1 step")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s to report the big passes' fraction of (none built in)")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")


def run(args: argparse.Namespace) -> int:
    result = measure(args)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
    return 0


COMMAND = Command("theory-measure", "time one streamed two-stage multi-index cell stage by stage (seconds, memory, FLOP/s)",
                  run, arguments,
                  "Run one two-stage cell of the multi-index task on streamed, regenerated real data and print seconds, "
                  "peak memory and, for the gradient and Gram passes, achieved FLOP/s per stage (docs/theory-scale.md).")
