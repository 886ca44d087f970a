"""The multi-index memory study: B*(eps) by search over seeds and configurations (docs/theory.md §7).

``ddbench theory-study`` runs one tier (``cpu``, ``gpu`` or the seconds-long ``tiny`` of the tests):
for every configuration and seed it builds the task, computes the full-data teacher at the seed's
theta0 and searches B*(eps) for eps in {0.05, 0.02} (:mod:`ddbench_theory.search`). Every evaluated
cell (teacher, student at (M1, M2), random subset at m) is appended to a cache file of its own
configuration and seed, so a rerun evaluates only what is missing. The per-seed results go to
``multi-index.json``, from which :mod:`ddbench_theory.board` writes the board.

The student is the ``two-stage`` distiller's artifact trained by the ``two-layer`` learner in
artifact mode and scored on the test split, its budget counted by :func:`ddbench.budget.artifact.count_storage`,
exactly as the harness does it; stage 1 (and the feature moments) run once per (seed, M1).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import math
import multiprocessing
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ddbench.budget.artifact import count_storage
from ddbench.contracts.hookspecs import Command
from ddbench.contracts.interfaces import RunContext, TaskView
from ddbench.errors import DDBenchError
from ddbench.run.suite import task_view
from ddbench_theory.distiller import FirstStage, TwoStage
from ddbench_theory.references import teacher, tuned_subset
from ddbench_theory.search import m1_values, search
from ddbench_theory.task import RIDGE_GRID, MultiIndex
from ddbench_theory.two_layer import TwoLayerLearner

EPSILONS = (0.05, 0.02)  # docs/theory.md §7: eps = 0.05, and 0.02 as a sensitivity check
CACHE_VERSION = 2  # bump when a change alters any cached number
RANDOM_ORDER_SEED = 20_261_202  # the seeded permutation of the random reference, offset by the seed


@dataclass(frozen=True)
class Config:
    """One configuration of the study (the seed draws U, the data, theta0, the biases and the distillation)."""

    link: str
    d: int
    r: int
    width: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.link}-d{self.d}-r{self.r}-L{self.width}-s{self.seed}"


@dataclass(frozen=True)
class Tier:
    """A study tier: the grid, the seeds, the task's sizes and the distiller's steps."""

    name: str
    ds: tuple[int, ...]
    rs: tuple[int, ...]
    widths: tuple[int, ...]
    seeds: int
    extra: tuple[tuple[str, int, int, int], ...]  # (link, d, r, L) outside the he2 grid
    n_cap: int
    n_test: int
    steps1: int
    steps2: int
    noise: float = 0.1

    def configs(self) -> list[Config]:
        keys = [("he2", d, r, w) for d in self.ds for r in self.rs for w in self.widths if r <= d] + list(self.extra)
        return [Config(link, d, r, w, s) for link, d, r, w in keys for s in range(self.seeds)]

    def settings(self) -> dict[str, Any]:
        """What changes a cached number (besides the configuration)."""
        return {"n_cap": self.n_cap, "n_test": self.n_test, "steps1": self.steps1, "steps2": self.steps2,
                "noise": self.noise, "version": CACHE_VERSION}


TIERS = {
    # docs/theory.md §7.1: the CPU tier of issue 16 (n = 4 d^2 r capped at 2e4, K1 = 500, closed-form stage-2 labels)
    "cpu": Tier("cpu", (16, 32, 64, 128), (1, 2, 3), (64, 256, 1024), 5,
                (("he2+he3", 32, 2, 256), ("he2+he3", 64, 2, 256), ("degenerate", 32, 3, 256), ("degenerate", 64, 3, 256)),
                n_cap=20_000, n_test=20_000, steps1=500, steps2=0),
    # the GPU tier (not run yet): d up to 1024, L up to 8192, 3 seeds, n capped at 1e6, the spec's K1
    "gpu": Tier("gpu", (128, 256, 512, 1024), (1, 2, 3), (1024, 4096, 8192), 3,
                (("he2+he3", 256, 2, 4096), ("degenerate", 256, 3, 4096)),
                n_cap=1_000_000, n_test=100_000, steps1=2000, steps2=0),
    # seconds, for the tests
    "tiny": Tier("tiny", (8, 16), (1, 2), (32,), 2, (), n_cap=2000, n_test=2000, steps1=100, steps2=0),
}


class StudyError(DDBenchError):
    """Bad input to the study command."""


class Evaluator:
    """The evaluator of one configuration and seed, with its cache file (one JSON object per line)."""

    def __init__(self, config: Config, tier: Tier, cache: Path, device: torch.device):
        self.config, self.tier, self.device = config, tier, device
        self.path = cache / f"{config.name}.jsonl"
        self.values: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.values[row["key"]] = row
        self.fresh = 0  # evaluations not found in the cache
        self._task: MultiIndex | None = None
        self._view: TaskView | None = None
        self._first: dict[int, FirstStage] = {}
        self._order: torch.Tensor | None = None
        self.distiller = TwoStage(steps1=tier.steps1, steps2=tier.steps2)
        self.learner = TwoLayerLearner(config.width)

    # -- the cache ---------------------------------------------------------------------------
    def _cached(self, key: str, compute: Any) -> dict[str, Any]:
        if key not in self.values:
            start = time.perf_counter()
            row = {"key": key, **compute(), "seconds": round(time.perf_counter() - start, 4)}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            self.values[key] = row
            self.fresh += 1
        return self.values[key]

    # -- what is evaluated ---------------------------------------------------------------------
    @property
    def task(self) -> MultiIndex:
        if self._task is None:
            c, t = self.config, self.tier
            self._task = MultiIndex(d=c.d, r=c.r, link=c.link, noise=t.noise, n_cap=t.n_cap, n_test=t.n_test,
                                    seed=c.seed, calib_width=c.width, calib_device=str(self.device))
        return self._task

    def context(self) -> RunContext:
        seed = self.config.seed
        return RunContext(self.device, seed, torch.Generator(self.device).manual_seed(seed), profile="quick")

    def teacher(self) -> dict[str, Any]:
        def compute() -> dict[str, Any]:
            task = self.task
            cal = task.calibration()
            return {**teacher(task.truth(self.device), self.config.seed, self.config.width), "n": len(task.load().train),
                    "n_capped": task.n_capped, "rho": cal["rho"], "ridge": cal["ridge"]}
        return self._cached("teacher", compute)

    def student(self, m1: int, m2: int) -> tuple[float, int]:
        def compute() -> dict[str, Any]:
            task, view = self.task, self.view
            try:
                if m1 not in self._first:
                    self._first[m1] = self.distiller.first_stage(view, self.learner, self.context(), m1)
                artifact = self.distiller.second_stage(self._first[m1], self.context(), m2)
            except (ValueError, FloatingPointError) as exc:  # a degenerate S1 or a diverged stage: this size fails
                return {"r2": None, "stored": self.size(m1, m2), "error": str(exc)}
            recipe = task.recipe("full").updated(artifact.recipe)
            model = self.learner.fit(self.learner.build(view, self.config.seed), artifact, recipe, torch.Generator(self.device))
            test = task.truth(self.device).test
            r2 = task.score(self.learner.predict(model, test.x, batch_size=16384), test.y)["r2"]
            return {"r2": r2, "stored": count_storage(artifact).scalars, "stage2_loss": artifact.meta["stage2_loss"],
                    "stage1_mismatch": artifact.meta["stage1_mismatch"], "overlap": task.subspace_overlap(artifact.tensors["x1"])}
        row = self._cached(f"student/{m1}/{m2}", compute)
        if row["stored"] != self.size(m1, m2):
            raise AssertionError(f"counted {row['stored']} scalars, the search assumed {self.size(m1, m2)}")
        return (-math.inf if row["r2"] is None else row["r2"]), row["stored"]

    def random(self, m: int) -> float:
        def compute() -> dict[str, Any]:
            truth = self.task.truth(self.device)
            if self._order is None:
                gen = torch.Generator().manual_seed(RANDOM_ORDER_SEED + self.config.seed)
                self._order = torch.randperm(len(truth.train), generator=gen).to(self.device)
            return tuned_subset(truth, self.config.seed, self.config.width, self._order[:m], RIDGE_GRID)
        return self._cached(f"random/{m}", compute)["r2"]

    @property
    def view(self) -> TaskView:
        """The distiller's view of the task on the device, built once."""
        if self._view is None:
            self._view = task_view(self.task, self.task.load(), self.device, options={})
        return self._view

    def size(self, m1: int, m2: int) -> int:
        """The counted budget of a two-stage artifact (docs/theory.md §4.3); checked against the counter in the tests."""
        return m1 * (self.config.d + 1) + 2 * self.config.d + 2 * m2 + 1


def run_config(config: Config, tier: Tier, cache: Path, device: str, threads: int) -> dict[str, Any]:
    """One configuration and seed: the teacher, B*(eps) for each eps, and what it cost."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    cell = Evaluator(config, tier, cache, torch.device(device))
    ref = cell.teacher()
    results = [search(cell, config.r, config.d, config.width, ref["n"], ref["teacher_r2"], eps, cell.size) for eps in EPSILONS]
    students = [row for key, row in cell.values.items() if key.startswith("student/")]
    return {"config": asdict(config), "tier": tier.name, "settings": tier.settings(), "device": _device_name(device),
            "n": ref["n"], "n_capped": ref["n_capped"], "rho": ref["rho"], "ridge": ref["ridge"],
            "teacher_r2": ref["teacher_r2"], "full_data": ref["n"] * (config.d + 1),
            "theory": config.r**2 * config.d + config.width, "store_model": config.width * (config.d + 2) + config.d + 1,
            "b_star": {str(b.eps): asdict(b) for b in results},
            "at_spec": _at_spec(cell), "evaluations": len(cell.values), "fresh": cell.fresh,
            "compute_s": round(sum(row["seconds"] for row in cell.values.values()), 2),
            "seconds": round(time.perf_counter() - start, 2),
            "stage1": {str(m1): _stage1(students, m1) for m1 in m1_values(config.r)}}


def _at_spec(cell: Evaluator) -> dict[str, Any]:
    """The student at the spec's M1 = r^2, M2 = L (claim 1), from the cache."""
    row = cell.values.get(f"student/{cell.config.r ** 2}/{cell.config.width}")
    return {} if row is None or "error" in row else {k: row[k] for k in ("r2", "stored", "stage2_loss", "stage1_mismatch", "overlap")}


def _stage1(students: list[dict[str, Any]], m1: int) -> dict[str, float] | None:
    rows = [row for row in students if row["key"].split("/")[1] == str(m1) and "error" not in row]
    return None if not rows else {"mismatch": rows[0]["stage1_mismatch"], "overlap": rows[0]["overlap"]}


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"


def run_study(tier: Tier, cache: Path, device: str = "cpu", workers: int = 1, only: list[Config] | None = None,
              log: Any = print) -> list[dict[str, Any]]:
    """Every configuration and seed of ``tier`` (or ``only``), ``workers`` processes at a time, in a stable order;
    a configuration that fails is logged and left out."""
    configs = only if only is not None else tier.configs()
    cache = cache / _settings_key(tier)
    out: dict[Config, dict[str, Any]] = {}
    done = 0

    def finish(config: Config, get: Any) -> None:
        nonlocal done
        done += 1
        try:
            out[config] = get()
        except Exception as exc:  # noqa: BLE001 - one failing configuration never takes down the run
            log(f"[{done}/{len(configs)}] {config.name}: failed: {type(exc).__name__}: {exc}")
            return
        log(_progress(out[config], done, len(configs)))

    if workers <= 1:
        for config in configs:
            finish(config, partial(run_config, config, tier, cache, device, torch.get_num_threads()))
    else:
        threads = max(1, torch.get_num_threads() // workers)
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_config, c, tier, cache, device, threads): c for c in _largest_first(configs)}
            for future in concurrent.futures.as_completed(futures):
                finish(futures[future], future.result)
    return [out[c] for c in configs if c in out]


def _largest_first(configs: list[Config]) -> list[Config]:
    """The slowest cells first, so that the pool does not end on one long cell."""
    return sorted(configs, key=lambda c: -(c.width**2 * (c.d + c.width) * c.r))


def _settings_key(tier: Tier) -> str:
    blob = json.dumps(tier.settings(), sort_keys=True)
    return f"{tier.name}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def _progress(result: dict[str, Any], done: int, total: int) -> str:
    b = result["b_star"][str(EPSILONS[0])]
    return (f"[{done}/{total}] {Config(**result['config']).name}: teacher R^2 {result['teacher_r2']:.3f}, "
            f"B*(0.05) {b['budget']}, random {b['random_budget']}, {result['fresh']} new of {result['evaluations']} cells, "
            f"{result['seconds']:.1f} s")


# -- ddbench theory-study ------------------------------------------------------------------------
def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tier", default="cpu", help=f"the study's grid: {', '.join(TIERS)} (default cpu)")
    parser.add_argument("--out", default="leaderboards", help="where the board goes (default leaderboards)")
    parser.add_argument("--cache", default=".ddbench/theory-study", help="the cache of evaluated cells")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--workers", type=int, default=1, help="processes in parallel (CPU: one per core pays)")
    parser.add_argument("--steps2", type=int, default=None, help="stage-2 Adam steps after the closed-form labels "
                        "(default: the tier's, 0 on CPU)")
    parser.add_argument("--board-only", action="store_true", help="rewrite the board from OUT/multi-index.json only")


def run(args: argparse.Namespace) -> int:
    import ddbench_theory.board as board

    out = Path(args.out)
    if args.board_only:
        path = out / f"{board.NAME}.json"
        if not path.exists():
            raise StudyError(f"no study results at {path}: run `ddbench theory-study --out {out}` first.")
        for written in board.write(json.loads(path.read_text()), out):
            print(f"wrote {written}")
        return 0
    if args.tier not in TIERS:
        raise StudyError(f"unknown --tier {args.tier!r}: use one of {', '.join(TIERS)}.")
    if args.workers < 1:
        raise StudyError(f"--workers must be at least 1 (got {args.workers}).")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise StudyError("--device cuda but this torch sees no CUDA device: use --device cpu or auto.")
    tier = TIERS[args.tier]
    if args.steps2 is not None:
        tier = replace(tier, steps2=args.steps2)
    start = time.perf_counter()
    results = run_study(tier, Path(args.cache), device, args.workers)
    elapsed = time.perf_counter() - start
    for written in board.write(results, out, elapsed=elapsed):
        print(f"wrote {written}")
    missing = len(tier.configs()) - len(results)
    print(f"{len(results)} configurations and seeds in {elapsed:.0f} s" + (f"; {missing} failed (see above)" if missing else ""))
    return 1 if missing else 0


COMMAND = Command("theory-study", "the multi-index memory study: B* by search, seeds, intervals (docs/theory.md §7)",
                  run, arguments, "Search B*(eps) for every configuration and seed of a tier, cache every evaluated "
                  "cell, and write leaderboards/multi-index.md with its CSV, plot and JSON.")
