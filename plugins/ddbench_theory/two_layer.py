"""The width-L two-layer ReLU network trained by "one big first-layer step, then ridge".

Reconstruction (see docs/theory.md §3, after Damian, Lee & Soltanolkotabi 2022, Algorithm 1):
symmetric initialisation (f_theta0 = 0), label preprocessing y <- y - alpha - beta^T x, one
first-layer gradient step with weight decay 1/eta_1 that cancels W0 (closed form), bias
re-initialisation, then a ridge fit of the second layer (fp64 Cholesky). eta_1 = rho * sqrt(d).

Public recipe options (``Recipe.options``; ``rho`` and ``ridge`` from the task, the others may
be declared by an artifact; never counted):

- ``rho``, ``ridge``: eta_1 = rho sqrt(d) and the ridge lambda (docs/theory.md §3).
- ``init_seed``: the fixed-init protocol (docs/theory.md §3, §5). When present, theta0 and the
  re-initialised biases are drawn from this seed instead of the evaluation seed, so a student
  trained on a distilled artifact uses the very theta0 the distiller matched gradients at.
- ``first_layer``: ``step`` (default) or ``random`` (random features, docs/theory.md §6: W = W0, no
  first-layer step).
- ``head_data`` (artifact mode): ``s2`` (default) or ``s1+s2``: the points the ridge head is fit on.

Artifact-mode tensor ``grid`` (variant ``(b)-grid``): the half-width T of the grid of stage-2
positions, stored (and counted) instead of ``t2``.

Two ways to train (:meth:`TwoLayerLearner.fit`):

- **data mode**, an artifact with ``x`` and ``y`` (real points): the full algorithm of §3.
- **artifact mode**, an artifact with the two-stage distilled set of docs/theory.md §4.3
  (``x1, y1, v, t2, y2, alpha, beta``): the first-layer step on S1 = (x1, y1) with the stored labels
  as given, the stored alpha and beta as given (no re-estimation), ridge on S2 = {(t_k v, y2_k)}
  with the same lambda (docs/theory.md §5).
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from ddbench.contracts.interfaces import Artifact, Learner, TaskView
from ddbench.contracts.recipe import Recipe

CHUNK = 32768
REINIT_STREAM = 1 << 32  # bias re-initialisation seed = init seed + 2^32 (a stream apart from theta0's)
ARTIFACT_TENSORS = ("x1", "y1", "v", "y2", "alpha", "beta")
FIRST_LAYER = ("step", "random")
HEAD_DATA = ("s2", "s1+s2")


def symmetric_init(d: int, width: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """theta0 = (a, W, b) of docs/theory.md §3 drawn on the CPU from ``seed``: for j <= L/2, a_j ~ U{+-1},
    w_j ~ U(S^{d-1}), b_j ~ N(0, 1); neuron j + L/2 copies (w_j, b_j) with a_{j+L/2} = -a_j."""
    if width % 2 or width < 2:
        raise ValueError(f"the two-layer learner needs an even width >= 2 (symmetric initialisation), got {width}")
    g = torch.Generator().manual_seed(seed)
    half = width // 2
    a = torch.randint(0, 2, (half,), generator=g).float() * 2 - 1
    w = torch.randn(half, d, generator=g)
    w = w / w.norm(dim=1, keepdim=True)
    b = torch.randn(half, generator=g)
    return torch.cat([a, -a]), torch.cat([w, w]), torch.cat([b, b])


def reinit_biases(width: int, seed: int) -> Tensor:
    """The re-initialised biases b ~ N(0, I_L) of step 3, from the init seed's own stream (CPU)."""
    return torch.randn(width, generator=torch.Generator().manual_seed(seed + REINIT_STREAM))


class TwoLayer(nn.Module):
    """f(x) = alpha + beta^T x + sum_j a_j relu(w_j^T x + b_j), state held in buffers."""

    a: Tensor  # the buffers, declared for type checkers
    W: Tensor
    b: Tensor
    alpha: Tensor
    beta: Tensor

    def __init__(self, d: int, width: int, seed: int):
        super().__init__()
        self.d, self.width = d, width
        a, w, b = symmetric_init(d, width, seed)
        self.register_buffer("a", a)
        self.register_buffer("W", w)
        self.register_buffer("b", b)
        self.register_buffer("alpha", torch.zeros(()))
        self.register_buffer("beta", torch.zeros(d))
        self.seed = seed

    def reset(self, seed: int) -> None:
        """Back to the symmetric theta0 of ``seed`` (on the module's device), prediction f = 0."""
        a, w, b = symmetric_init(self.d, self.width, seed)
        device = self.W.device
        self.a, self.W, self.b = a.to(device), w.to(device), b.to(device)
        self.alpha, self.beta = torch.zeros((), device=device), torch.zeros(self.d, device=device)
        self.seed = seed

    def reinit_bias(self) -> None:
        self.b = reinit_biases(self.width, self.seed).to(self.W.device)

    def features(self, x: Tensor) -> Tensor:
        return torch.relu(x @ self.W.T + self.b)

    def forward(self, x: Tensor) -> Tensor:
        return self.alpha + x @ self.beta + self.features(x) @ self.a


def preprocess_labels(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Step 1 of docs/theory.md §3: alpha = mean(y), beta = mean(y x), and the labels y - alpha - beta^T x."""
    alpha, beta = y.mean(), (y[:, None] * x).mean(0)
    return alpha, beta, y - alpha - x @ beta


def first_layer_grad(a: Tensor, w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """grad_W of L(theta) = (1/m) sum_i (f(x_i) - y_i)^2 at a theta with f = 0 (docs/theory.md §4.1):
    G = -(2/m) diag(a) [1(W x_i + b > 0) y_i]^T X. Differentiable in ``x`` and ``y`` (the gate has
    zero derivative a.e., as autograd through ReLU gives); chunked over the examples."""
    grad = torch.zeros_like(w)
    for i in range(0, len(x), CHUNK):
        xc, yc = x[i : i + CHUNK], y[i : i + CHUNK]
        gate = (xc.detach() @ w.T + b > 0).to(x.dtype)  # (m, L)
        grad = grad + (gate * yc[:, None]).T @ xc
    return (-2.0 / len(x)) * a[:, None] * grad


def first_layer_step(model: TwoLayer, x: Tensor, y: Tensor, eta: float) -> Tensor:
    """W1 = W0 - eta (grad_W L(theta0) + W0 / eta) = -eta grad_W L(theta0) (weight decay 1/eta cancels
    W0): w1_j = (2 eta a_j / m) sum_i y_i 1[w0_j^T x_i + b_j > 0] x_i (docs/theory.md §3 step 2)."""
    return -eta * first_layer_grad(model.a, model.W, model.b, x, y)


def feature_moments(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """C = Phi^T Phi / n (L x L), h = Phi^T y / n, q = mean(y^2) for Phi = relu(X W^T + b), in fp64,
    accumulated in chunks so Phi is never held for all points (docs/theory.md §4.2, §8)."""
    width = len(b)
    gram = torch.zeros(width, width, dtype=torch.float64, device=x.device)
    rhs = torch.zeros(width, dtype=torch.float64, device=x.device)
    for i in range(0, len(x), CHUNK):
        phi = torch.relu(x[i : i + CHUNK] @ w.T + b).double()
        gram += phi.T @ phi
        rhs += phi.T @ y[i : i + CHUNK].double()
    n = len(x)
    return gram / n, rhs / n, (y.double() ** 2).mean()


def ridge_from_moments(gram: Tensor, rhs: Tensor, lam: float) -> Tensor:
    """a = (C + lam I)^-1 h by fp64 Cholesky, which equals (Phi^T Phi + m lam I)^-1 Phi^T y."""
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    chol, info = torch.linalg.cholesky_ex(gram + lam * eye)
    if int(info) == 0:
        return torch.cholesky_solve(rhs[:, None], chol)[:, 0]
    # Rounding made a rank-deficient Gram (fewer points than neurons, tiny lambda) indefinite:
    # solve in its eigenbasis with the eigenvalues clamped at 0, the same minimiser in exact arithmetic.
    evals, evecs = torch.linalg.eigh(gram)
    return evecs @ ((evecs.T @ rhs) / (evals.clamp_min(0) + lam))


def ridge_head(model: TwoLayer, x: Tensor, y: Tensor, lam: float) -> Tensor:
    """The ridge second layer of step 4 on the model's current features of (x, y)."""
    gram, rhs, _ = feature_moments(model.W, model.b, x, y)
    return ridge_from_moments(gram, rhs, lam).to(model.W.dtype)


def grid_positions(m2: int, half_width: float, device: torch.device | str = "cpu") -> Tensor:
    """The public stage-2 grid of variant ``(b)-grid``: m2 cell midpoints evenly spread over [-T, T]."""
    return -half_width + 2 * half_width * (torch.arange(m2, device=device, dtype=torch.float32) + 0.5) / m2


class TwoLayerLearner(Learner):
    """Width-L two-layer ReLU network, one-step feature learning then ridge (docs/theory.md §3, §5).

    Reconstruction (see docs/theory.md). Trains from real points (``x``, ``y``) or from the two-stage
    distilled artifact (``x1, y1, v, t2, y2, alpha, beta``); see the module docstring for the recipe
    options. ``width`` is L (even).
    """

    name = "two-layer"
    description = "width-L two-layer ReLU net: one big first-layer step, then ridge (theory task)"
    recipe_options: ClassVar[dict[str, type]] = {"rho": float, "ridge": float, "init_seed": int, "first_layer": str, "head_data": str}
    input_tensors = ("x", "x1")

    def __init__(self, width: int = 256):
        if width % 2 or width < 2:
            raise ValueError(f"width must be even and >= 2 (symmetric initialisation), got {width}")
        self.width = width

    def build(self, task: TaskView, seed: int) -> nn.Module:
        if len(task.input_shape) != 1:
            raise ValueError(f"two-layer needs vector inputs; task {task.name!r} has shape {task.input_shape}.")
        return TwoLayer(task.input_shape[0], self.width, seed)

    def fit(self, model: nn.Module, artifact: Artifact, recipe: Recipe, generator: torch.Generator) -> TwoLayer:
        if not isinstance(model, TwoLayer):
            raise TypeError(f"two-layer fits TwoLayer models built by its build(), got {type(model).__name__}.")
        opts = recipe.options
        first_layer = opts.get("first_layer", "step")
        if first_layer not in FIRST_LAYER:
            raise ValueError(f"recipe option first_layer={first_layer!r} is unknown: use one of {FIRST_LAYER}.")
        if "init_seed" in opts:
            model.reset(int(opts["init_seed"]))
        eta = float(opts.get("rho", 1.0)) * math.sqrt(model.d)
        lam = float(opts.get("ridge", 1e-3))
        if "x1" in artifact.tensors:
            return self._fit_artifact(model, artifact.tensors, opts, eta, lam)
        x, y = artifact.x.float(), artifact.y.float()
        model.alpha, model.beta, y = preprocess_labels(x, y)
        if first_layer == "step":
            model.W = first_layer_step(model, x, y, eta)
        model.reinit_bias()
        model.a = ridge_head(model, x, y, lam)
        return model

    def _fit_artifact(self, model: TwoLayer, tensors: dict[str, Tensor], opts: dict, eta: float, lam: float) -> TwoLayer:
        """Artifact mode (docs/theory.md §5): everything from the stored tensors, labels as given."""
        missing = [k for k in ARTIFACT_TENSORS if k not in tensors]
        if missing or ("t2" not in tensors and "grid" not in tensors):
            raise ValueError(
                f"two-layer artifact mode needs tensors {', '.join(ARTIFACT_TENSORS)} and t2 (or grid); "
                f"missing: {', '.join(missing) or 't2/grid'}."
            )
        head_data = opts.get("head_data", "s2")
        if head_data not in HEAD_DATA:
            raise ValueError(f"recipe option head_data={head_data!r} is unknown: use one of {HEAD_DATA}.")
        x1, y1 = tensors["x1"].float(), tensors["y1"].float()
        v, y2 = tensors["v"].double(), tensors["y2"].double()
        t2 = tensors["t2"] if "t2" in tensors else grid_positions(len(y2), float(tensors["grid"].reshape(-1)[0]), y2.device)
        model.alpha = tensors["alpha"].float().reshape(())
        model.beta = tensors["beta"].float()
        if opts.get("first_layer", "step") == "step":
            model.W = first_layer_step(model, x1, y1, eta)
        model.reinit_bias()
        # S2 = {(t_k v, y2_k)} and its ridge head in fp64: on a line the features are ramps whose
        # feature matrix can be ill-conditioned (M2 = L, small lambda), where fp32 rounding of the
        # features alone changes the head (docs/theory.md §4.2, "the failure cell").
        x2 = t2.double()[:, None] * v.double()[None, :]
        if head_data == "s1+s2":
            x2, y2 = torch.cat([x1.double(), x2]), torch.cat([y1.double(), y2])
        gram, rhs, _ = feature_moments(model.W.double(), model.b.double(), x2, y2)
        model.a = ridge_from_moments(gram, rhs, lam).to(model.W.dtype)
        return model
