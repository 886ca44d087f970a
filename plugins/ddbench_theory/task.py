"""The synthetic multi-index regression task of ``docs/theory.md`` §2 (a reconstruction).

x ~ N(0, I_d); y = g(U^T x) + noise with U (d x r, orthonormal columns, QR of a seeded Gaussian).
U is known to this task (for scoring and diagnostics) and never shown to distillers or learners.
The test split is fresh Gaussian inputs with **noise-free** targets f*(x), so R^2 = 1 - MSE/Var(f*).

The public recipe of the two-layer learner (eta_1 = rho sqrt(d), ridge lambda) is calibrated once
per task instance on the train and **validation** splits only (docs/theory.md §3; see
:meth:`MultiIndex.calibration`); the test split is never used for any choice.
"""
from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ddbench.contracts import options
from ddbench.contracts.interfaces import Artifact, Split, Task, TaskData
from ddbench.contracts.recipe import Recipe
from ddbench_theory.references import Truth, references, student_metrics
from ddbench_theory.two_layer import TwoLayer, feature_moments, first_layer_step, preprocess_labels, ridge_from_moments

LINKS = ("he2", "he2+he3", "degenerate")
RIDGE_GRID = tuple(10.0**k for k in range(-6, 1))  # docs/theory.md §3: 1e-6 ... 1e0, log grid
RHO_GRID = (0.5, 1.0, 2.0, 4.0)  # docs/theory.md §3: the validation sweep of rho
RHO_RULES = ("norm", "val")


def he2(z: Tensor) -> Tensor:
    return z**2 - 1


def he3(z: Tensor) -> Tensor:
    return z**3 - 3 * z


def link_fn(name: str, z: Tensor) -> Tensor:
    """g(z) for z = U^T x of shape (N, r); each link has E g = 0, E g^2 = 1, no linear part."""
    r = z.shape[1]
    if name == "he2":
        return he2(z).sum(1) / math.sqrt(2 * r)
    if name == "he2+he3":
        return (he2(z).sum(1) / math.sqrt(2 * r) + he3(z[:, 0]) / math.sqrt(6)) / math.sqrt(2)
    if name == "degenerate":
        return (he2(z[:, 0]) / math.sqrt(2) + z[:, 0] * z[:, 1] * z[:, 2]) / math.sqrt(2)
    raise ValueError(f"unknown link {name!r}: use one of {LINKS}")


def subspace(d: int, r: int, seed: int) -> Tensor:
    """U (d x r, orthonormal columns) of the task seeded ``seed``: QR of a seeded fp64 Gaussian on the CPU, then fp32."""
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0].float()


def default_n(d: int, r: int, cap: int) -> int:
    """docs/theory.md §7: n = C d^2 r with C = 4, capped (record when capped: see ``info()['n_capped']``)."""
    return min(4 * d * d * r, cap)


class MultiIndex(Task):
    """Gaussian multi-index regression y = g(U^T x) + N(0, noise^2) (docs/theory.md §2).

    Reconstruction (see docs/theory.md). Options: ``d`` input dimension, ``r`` intrinsic dimension,
    ``link`` (he2, he2+he3, degenerate), ``noise`` label noise std, ``n`` examples before the
    validation carve (default 4 d^2 r capped at ``n_cap``, §7), ``n_test`` fresh test inputs,
    ``seed`` (draws U and every split). Public recipe (§3): ``rho`` and ``ridge`` fix eta_1 = rho
    sqrt(d) and lambda; left at ``None`` they are calibrated on validation (``rho_rule``: ``norm``
    sets the full-data median ||w1_j|| to 1, ``val`` sweeps rho over {0.5, 1, 2, 4}) for a
    two-layer network of width ``calib_width`` (match the learner's width), on ``calib_device``
    (``auto``: CUDA when present; the O(n L^2) calibration is too slow on a CPU at GPU-tier sizes).
    """

    name = "multi-index"
    description = "synthetic Gaussian multi-index regression y = g(U^T x) + noise (generated)"
    kind = "regression"
    metric = "r2"
    default_learner = "two-layer"
    higher_is_better: ClassVar[dict[str, bool]] = {
        **Task.higher_is_better, "teacher_r2": True, "teacher_mse": False, "random_equal_r2": True, "random_features_r2": True,
        "oracle_head_r2": True, "alignment": True, "subspace_overlap": True, "w1_alignment": True, "stage1_mismatch": False}
    leaderboard_columns = ("mse", "teacher_r2", "random_equal_r2", "random_features_r2", "alignment", "subspace_overlap")
    num_classes = None
    quick: ClassVar[dict[str, Any]] = {"n_test": 20000, "n_cap": 20000}

    def __init__(self, d: int = 32, r: int = 2, link: str = "he2", noise: float = 0.1, n: int | None = None,
                 n_cap: int = 1_000_000, n_test: int = 100_000, val_fraction: float = 0.1, seed: int = 0,
                 rho: float | None = None, ridge: float | None = None, rho_rule: str = "norm", calib_width: int = 256,
                 calib_device: str = "auto"):
        options.one_of("link", link, LINKS)
        options.one_of("rho_rule", rho_rule, RHO_RULES)
        options.positive(d=d, n=n, n_cap=n_cap, n_test=n_test, rho=rho, ridge=ridge, calib_width=calib_width)
        options.non_negative(noise=noise)
        options.within("val_fraction", val_fraction, 0, 1, low_open=True)
        if link == "degenerate" and r < 3:
            raise ValueError("link 'degenerate' needs r >= 3")
        if not 1 <= r <= d:
            raise ValueError(f"need 1 <= r <= d (got r={r}, d={d})")
        self.d, self.r, self.link, self.noise = d, r, link, noise
        self.n = n if n is not None else default_n(d, r, n_cap)
        self.n_capped = n is None and self.n < 4 * d * d * r
        self.n_test, self.val_fraction, self.seed = n_test, val_fraction, seed
        self.rho, self.ridge, self.rho_rule, self.calib_width = rho, ridge, rho_rule, calib_width
        if calib_device == "auto":
            calib_device = "cuda" if torch.cuda.is_available() else "cpu"
        self.calib_device = torch.device(calib_device)
        self.input_shape = (d,)
        self.U = subspace(d, r, seed)
        self._data: TaskData | None = None
        self._truths: dict[str, Truth] = {}
        self._references: dict[tuple[int, int, str], dict[str, float]] = {}

    def target(self, x: Tensor) -> Tensor:
        """The noise-free f*(x)."""
        return link_fn(self.link, x @ self.U.to(x.device))

    def load(self) -> TaskData:
        if self._data is None:
            g = torch.Generator().manual_seed(self.seed + 1)
            x = torch.randn(self.n, self.d, generator=g)
            y = self.target(x) + self.noise * torch.randn(self.n, generator=g)
            n_val = max(1, round(self.val_fraction * self.n))
            xt = torch.randn(self.n_test, self.d, generator=g)
            self._data = TaskData(Split(x[n_val:], y[n_val:]), Split(x[:n_val], y[:n_val]), Split(xt, self.target(xt)))
        return self._data

    # -- the public recipe --------------------------------------------------------------------
    @functools.cached_property
    def _calibration(self) -> dict[str, Any]:
        data = self.load()
        train, val = data.train.to(self.calib_device), data.val.to(self.calib_device)
        alpha, beta, y_pre = preprocess_labels(train.x.double(), train.y.double())
        y_pre = y_pre.float()
        model = TwoLayer(self.d, self.calib_width, seed=0).to(self.calib_device)
        w_unit = first_layer_step(model, train.x, y_pre, math.sqrt(self.d))  # eta_1 = sqrt(d), rho = 1
        median_norm = w_unit.norm(dim=1).median().item()
        if self.rho is not None:
            rhos = [self.rho]
        elif self.rho_rule == "norm":
            rhos = [1.0 / max(median_norm, 1e-12)]
        else:
            rhos = list(RHO_GRID)
        ridges = [self.ridge] if self.ridge is not None else list(RIDGE_GRID)
        model.reinit_bias()
        xv, yv = val.x, val.y
        table = []
        for rho in rhos:
            w = rho * w_unit
            gram, rhs, _ = feature_moments(w, model.b, train.x, y_pre)
            phi_val = torch.relu(xv @ w.T + model.b).double()
            base = alpha + xv.double() @ beta
            for lam in ridges:
                pred = base + phi_val @ ridge_from_moments(gram, rhs, lam)
                r2 = 1 - ((pred - yv.double()) ** 2).mean().item() / yv.double().var(unbiased=False).item()
                table.append({"rho": rho, "ridge": lam, "val_r2": r2})
        best = max(table, key=lambda row: row["val_r2"])
        return {"rho": best["rho"], "ridge": best["ridge"], "val_r2": best["val_r2"], "median_w1_norm_rho1": median_norm,
                "rule": "given" if self.rho is not None else self.rho_rule, "width": self.calib_width, "table": table}

    def calibration(self) -> dict[str, Any]:
        """The public two-layer recipe and how it was chosen (docs/theory.md §3), computed once.

        Full-data teacher at init seed 0 and width ``calib_width``, on the train split; rho by
        ``rho_rule`` (``norm``: 1 / median ||w1_j|| at rho = 1, so the median first-layer row norm is
        1; ``val``: the best of {0.5, 1, 2, 4} on validation), then lambda from 1e-6 ... 1e0 by
        validation R^2 (noisy validation labels). Options ``rho``/``ridge`` skip the search.
        """
        return self._calibration

    def recipe(self, profile: str) -> Recipe:
        """The two-layer learner's public settings: rho (eta_1 = rho sqrt(d)) and ridge lambda, calibrated
        on validation (see :meth:`calibration`). ``epochs``/``batch_size`` do not apply (closed form)."""
        cal = self.calibration()
        return Recipe(epochs=0, batch_size=0, options={"rho": cal["rho"], "ridge": cal["ridge"]})

    def info(self) -> dict[str, Any]:
        """Public facts: sizes, link, whether n was capped, and the two-layer recipe (rho, ridge) that
        a distiller for the two-layer learner must share with the student (docs/theory.md §3). U is not here."""
        cal = self.calibration()
        return {"data": "vector", "d": self.d, "r": self.r, "link": self.link, "n": self.n, "n_capped": self.n_capped,
                "rho": cal["rho"], "ridge": cal["ridge"]}

    # -- diagnostics (need U) ------------------------------------------------------------------
    def alignment(self, x: Tensor) -> Tensor:
        """Per row ||P_U x_k|| / ||x_k|| (1 = the row lies inside span(U))."""
        x = x.detach().float().cpu()
        return (x @ self.U).norm(dim=1) / x.norm(dim=1).clamp_min(1e-12)

    def subspace_overlap(self, x: Tensor) -> float:
        """||U^T Q||_F^2 / r with Q the top-r right singular vectors of ``x`` (docs/theory.md §5)."""
        x = x.detach().double().cpu()
        q = torch.linalg.svd(x, full_matrices=False)[2][: self.r].T
        return ((self.U.double().T @ q).norm() ** 2 / self.r).item()

    def first_layer_alignment(self, w: Tensor) -> float:
        """||W U||_F / ||W||_F (docs/theory.md §5)."""
        w = w.detach().double().cpu()
        return ((w @ self.U.double()).norm() / w.norm().clamp_min(1e-300)).item()

    def truth(self, device: torch.device) -> Truth:
        """What :mod:`ddbench_theory.references` needs, with the splits copied to ``device`` once."""
        if str(device) not in self._truths:
            data = self.load()
            self._truths[str(device)] = Truth(self.d, data.train.to(device), data.val.to(device), data.test.to(device),
                                              self.recipe("full"),
                                              self.score, self.first_layer_alignment)
        return self._truths[str(device)]

    def artifact_metrics(self, artifact: Artifact) -> dict[str, float]:
        """docs/theory.md §5 diagnostics: input alignment (mean, min, at init, v's), subspace overlap; for
        two-stage artifacts also the theory budget r^2 d + L, the stage-1 mismatch D and stage-2 loss,
        the first-layer alignment (student and teacher at the same theta0), the fresh-init "oracle
        head" R^2 and the §6 references at the same theta0 (:mod:`ddbench_theory.references`)."""
        tensors = artifact.tensors
        key = "x1" if "x1" in tensors else "x"
        if key not in tensors:
            return {}
        align = self.alignment(tensors[key])
        out = {"alignment": align.mean().item(), "alignment_min": align.min().item(),
               "subspace_overlap": self.subspace_overlap(tensors[key])}
        meta = artifact.meta
        if "x1" not in tensors or "width" not in meta or "init_seed" not in meta:
            return out
        width, init_seed = int(meta["width"]), int(meta["init_seed"])
        if meta.get("x1_init") is not None:
            out["alignment_init"] = self.alignment(torch.tensor(meta["x1_init"])).mean().item()
        out["v_alignment"] = self.alignment(tensors["v"][None]).item()
        out["theory_budget"] = float(self.r**2 * self.d + width)
        out["n_train"] = float(len(self.load().train))
        for name in ("m1", "m2", "stage1_mismatch", "stage2_loss", "stage2_best_loss"):
            if name in meta:
                out[name] = float(meta[name])
        truth = self.truth(tensors["x1"].device)
        at = (init_seed, width, str(tensors["x1"].device))
        if at not in self._references:
            self._references[at] = references(truth, init_seed, width)
        out.update(self._references[at])
        out.update(student_metrics(truth, artifact, init_seed, width))
        return out
