"""Streamed passes over the real data of the multi-index task, regenerated chunk by chunk (docs/theory.md §8).

At d = 1024, L = 8192, n = 10^6 the real inputs alone are 4 GB in fp32, the L x chunk gate of
the gradient pass is 2 GB per 65,536 rows and the Gram matrix is 0.5 GB in fp64. Nothing here
holds the n rows: :class:`StreamedMultiIndex` draws each chunk again, on the target device,
block by block (1,024 rows per block) from seeds derived from (seed, block index), so every pass is
one loop over chunks that sees exactly the same numbers whatever the chunk size, and only the
accumulators (d, L x d, L x L) stay resident. See docs/theory-scale.md.

The passes, each the streamed twin of an in-memory function of :mod:`ddbench_theory.two_layer`:

- :func:`label_moments`: alpha = mean(y), beta = mean(y x) (``preprocess_labels``, docs/theory.md §3 step 1);
- :func:`real_gradient`: the first-layer gradient at theta0 on the preprocessed labels (``first_layer_grad``);
- :func:`streamed_moments`: C = Phi^T Phi / n, h = Phi^T y / n, q = mean(y^2) (``feature_moments``);
- :func:`streamed_teacher`: the full-data learner (first-layer step, bias re-initialisation, ridge head);
- :func:`streamed_r2`: R^2 of several models on fresh test points with noise-free targets, in one pass.

Precision. Products run in fp32 and every sum across chunks is accumulated in fp64 (the gradient
pass, the label moments, the R^2 sums). The Gram pass has two modes (``gram=``):

- ``fp32`` (the default): Phi in fp32, Phi_c^T Phi_c in fp32 with TF32 off (scoped by
  :func:`tf32_off`, the previous setting restored), added into an fp64 accumulator. The rounding
  is that of one chunk's fp32 dot products (typically about sqrt(chunk) * 6e-8 relative), not of n rows.
- ``fp64``: Phi cast to fp64 and multiplied in fp64, as ``feature_moments`` does.

Why fp32 by default: measured on the 2-core CPU at d = 32, L = 256, n = 4 * 10^4, chunk 8192
(docs/theory-scale.md §5), the fp32 Gram pass took 0.58 s against 0.81 s for fp64 (1.4x faster), moved C
by 5e-8 relative (Frobenius) and the teacher's test R^2 by 3e-7. The ridge head moved by 3e-4 relative
at lambda = 1e-3 (4e-2 at lambda = 1e-6, along directions C barely weighs, hence the unchanged R^2).
fp32 also halves the chunk's feature buffer (2 GB instead of 4 GB at 65,536 x 8192). The ridge solve
itself is fp64 either way (``ridge_from_moments``). On a GPU the two modes' speeds differ by chip:
compare them with ``ddbench theory-measure --gram fp64``. Use ``gram='fp64'`` when lambda is so small that
C's rounding matters.

The train rows of this source are not those of :class:`~ddbench_theory.task.MultiIndex` (that task
draws all n rows from one CPU stream); the law is the same and U is the same, drawn from ``seed`` as
the task draws it. Chunks drawn on CUDA differ from chunks drawn on the CPU (different generators),
and are identical from call to call on one device.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

from ddbench.contracts import options
from ddbench_theory.task import LINKS, link_fn, subspace
from ddbench_theory.two_layer import TwoLayer, ridge_from_moments

TRAIN, TEST = 0, 1  # the two streams of one source: train rows (noisy labels) and test rows (noise-free targets)
GRAM_MODES = ("fp32", "fp64")
DEFAULT_CHUNK = 65536  # docs/theory.md §8: 32k-64k rows per chunk
DEFAULT_BLOCK = 1024  # rows per seeded block: the rows do not depend on the chunk size
_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def chunk_seed(seed: int, k: int, stream: int = TRAIN) -> int:
    """The generator seed of block ``k`` of ``stream`` for the source seed ``seed``: a 63-bit hash of the
    three (SplitMix64 finaliser, applied once per input), so neighbouring chunks and seeds get unrelated streams."""
    z = _splitmix64(seed & _MASK64)
    z = _splitmix64(z ^ (stream & _MASK64))
    return _splitmix64(z ^ (k & _MASK64)) >> 1


@dataclass
class StreamedMultiIndex:
    """The multi-index law y = g(U^T x) + N(0, noise^2), x ~ N(0, I_d), as ``n`` train rows and ``n_test``
    test rows that are regenerated chunk by chunk and never held together.

    The rows are defined in blocks of ``block`` rows: block j of a stream is drawn by a
    ``torch.Generator`` on ``device`` seeded with :func:`chunk_seed` (seed, j, stream), x first, then
    the label noise. Chunk k (rows [k chunk, min((k + 1) chunk, rows))) is regenerated from the
    seeds of the blocks it covers, so it holds the same numbers on every call and the rows do not
    depend on ``chunk``: a pass gives the same result at any chunk size, up to rounding. (A block
    that straddles two chunks is drawn for each; keep ``chunk`` a multiple of ``block`` to avoid
    that.) Train rows carry noisy labels, test rows noise-free targets f*(x). ``U`` defaults to
    the task's U for ``seed`` (:func:`~ddbench_theory.task.subspace`).
    """

    d: int
    r: int
    link: str = "he2"
    noise: float = 0.1
    n: int = 1_000_000
    seed: int = 0
    chunk: int = DEFAULT_CHUNK
    device: torch.device | str = "cpu"
    n_test: int = 100_000
    block: int = DEFAULT_BLOCK
    U: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        options.one_of("link", self.link, LINKS)
        options.positive(d=self.d, r=self.r, n=self.n, chunk=self.chunk, n_test=self.n_test, block=self.block)
        options.non_negative(noise=self.noise)
        if self.r > self.d:
            raise ValueError(f"need 1 <= r <= d (got r={self.r}, d={self.d})")
        if self.link == "degenerate" and self.r < 3:
            raise ValueError("link 'degenerate' needs r >= 3")
        self.device = torch.device(self.device)
        u = subspace(self.d, self.r, self.seed) if self.U is None else self.U.float()
        if tuple(u.shape) != (self.d, self.r):
            raise ValueError(f"U must have shape ({self.d}, {self.r}), got {tuple(u.shape)}")
        self.U = u.to(self.device)

    def rows(self, test: bool = False) -> int:
        return self.n_test if test else self.n

    def num_chunks(self, test: bool = False) -> int:
        return math.ceil(self.rows(test) / self.chunk)

    def target(self, x: Tensor) -> Tensor:
        """The noise-free f*(x) = g(U^T x)."""
        return link_fn(self.link, x @ cast(Tensor, self.U))  # __post_init__ sets U

    def _block(self, j: int, test: bool) -> tuple[Tensor, Tensor | None]:
        rows = min(self.block, self.rows(test) - j * self.block)
        g = torch.Generator(self.device).manual_seed(chunk_seed(self.seed, j, TEST if test else TRAIN))
        x = torch.randn(rows, self.d, generator=g, device=self.device)
        noise = None if test or self.noise == 0 else torch.randn(rows, generator=g, device=self.device)
        return x, noise

    def chunk_at(self, k: int, test: bool = False) -> tuple[Tensor, Tensor]:
        """Chunk ``k`` (x, y) of the train stream (noisy y) or of the test stream (y = f*(x))."""
        if not 0 <= k < self.num_chunks(test):
            raise IndexError(f"chunk {k} out of range: the {'test' if test else 'train'} stream has {self.num_chunks(test)}")
        start, stop = k * self.chunk, min((k + 1) * self.chunk, self.rows(test))
        xs, noises = [], []
        for j in range(start // self.block, (stop - 1) // self.block + 1):
            x, noise = self._block(j, test)
            lo, hi = max(start - j * self.block, 0), min(stop - j * self.block, len(x))
            xs.append(x[lo:hi])
            if noise is not None:  # all blocks or none: test rows and noise 0 have none
                noises.append(noise[lo:hi])
        x = xs[0] if len(xs) == 1 else torch.cat(xs)
        y = self.target(x)
        if noises:
            y = y + self.noise * (noises[0] if len(noises) == 1 else torch.cat(noises))
        return x, y

    def chunks(self, test: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        for k in range(self.num_chunks(test)):
            yield self.chunk_at(k, test)

    def materialise(self, test: bool = False) -> tuple[Tensor, Tensor]:
        """All rows of a stream at once (small sizes and tests only: this is what the passes avoid)."""
        xs, ys = zip(*self.chunks(test))
        return torch.cat(xs), torch.cat(ys)

    def preprocessed_chunk(self, k: int, alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
        """Train chunk ``k`` with the preprocessed labels y - alpha - beta^T x."""
        x, y = self.chunk_at(k)
        return x, _preprocess(x, y, alpha, beta)


def _preprocess(x: Tensor, y: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    return y - alpha.to(x.dtype) - x @ beta.to(x.dtype)


@contextmanager
def tf32_off() -> Iterator[None]:
    """CUDA matrix products in true fp32 (TF32 off) inside the block; the previous setting is restored."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


# -- the passes ---------------------------------------------------------------------------------
def label_moments(src: StreamedMultiIndex) -> tuple[Tensor, Tensor]:
    """alpha = mean(y) (shape ()) and beta = mean(y x) (shape (d,)) over the n train rows, fp64 sums, fp32 result."""
    total = torch.zeros((), dtype=torch.float64, device=src.device)
    cross = torch.zeros(src.d, dtype=torch.float64, device=src.device)
    for x, y in src.chunks():
        total += y.double().sum()
        cross += (y[:, None] * x).double().sum(0)
    return (total / src.n).float(), (cross / src.n).float()


def real_gradient(src: StreamedMultiIndex, a: Tensor, w: Tensor, b: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """G = -(2/n) diag(a) sum_chunks [1(X_c W^T + b > 0) * y_c]^T X_c on the preprocessed labels, at a theta with
    f = 0 (theta0): the streamed ``first_layer_grad``. fp32 products, fp64 accumulation, fp32 result (L x d).
    Per chunk the gate is chunk x L: size ``src.chunk`` to fit (2 GB at 65,536 x 8192 in fp32)."""
    acc = torch.zeros(w.shape, dtype=torch.float64, device=src.device)
    for k in range(src.num_chunks()):
        x, y = src.preprocessed_chunk(k, alpha, beta)
        gated = torch.addmm(b, x, w.T).gt_(0).mul_(y[:, None])  # 1(w_j^T x_i + b_j > 0) y_i, in place: one chunk x L buffer
        acc += (gated.T @ x).double()
    return ((-2.0 / src.n) * a.double()[:, None] * acc).float()


def streamed_moments(src: StreamedMultiIndex, w: Tensor, b: Tensor, alpha: Tensor, beta: Tensor,
                     gram: str = "fp32") -> tuple[Tensor, Tensor, Tensor]:
    """(C, h, q) of ``feature_moments`` for Phi = relu(X W^T + b) on the preprocessed labels, in fp64, streamed.

    ``gram='fp32'``: fp32 products with TF32 off, fp64 accumulation across chunks; ``'fp64'``: Phi in
    fp64 (see the module docstring for the choice)."""
    options.one_of("gram", gram, GRAM_MODES)
    width = len(b)
    acc = torch.zeros(width, width, dtype=torch.float64, device=src.device)
    rhs = torch.zeros(width, dtype=torch.float64, device=src.device)
    sq = torch.zeros((), dtype=torch.float64, device=src.device)
    with tf32_off():
        for k in range(src.num_chunks()):
            x, y = src.preprocessed_chunk(k, alpha, beta)
            phi = torch.addmm(b, x, w.T).relu_()
            if gram == "fp64":
                phi, y = phi.double(), y.double()
                acc += phi.T @ phi
                rhs += phi.T @ y
            else:
                acc += (phi.T @ phi).double()
                rhs += (phi.T @ y).double()
            sq += y.double().pow(2).sum()
    return acc / src.n, rhs / src.n, sq / src.n


def streamed_teacher(src: StreamedMultiIndex, width: int, init_seed: int, eta: float, lam: float, alpha: Tensor,
                     beta: Tensor, grad: Tensor | None = None, gram: str = "fp32") -> TwoLayer:
    """The full-data learner on all n streamed rows (docs/theory.md §3): W1 = -eta G at the theta0 of
    ``init_seed`` (``grad``: G when the caller has it, else one gradient pass), the re-initialised biases
    of ``TwoLayer.reinit_bias``, the ridge head from one streamed moments pass, alpha and beta as given."""
    model = TwoLayer(src.d, width, init_seed).to(src.device)
    if grad is None:
        grad = real_gradient(src, model.a, model.W, model.b, alpha, beta)
    model.alpha, model.beta = alpha.reshape(()).float(), beta.float()
    model.W = -eta * grad
    model.reinit_bias()
    c, h, _ = streamed_moments(src, model.W, model.b, alpha, beta, gram)
    model.a = ridge_from_moments(c, h, lam).to(model.W.dtype)
    return model


@torch.no_grad()
def streamed_r2(src: StreamedMultiIndex, models: Mapping[str, nn.Module]) -> dict[str, float]:
    """R^2 = 1 - MSE / Var(f*) of each model on the ``n_test`` test rows (noise-free targets), all models
    in one streamed pass; fp64 sums, population variance (as ``Task.score``)."""
    sse = {name: torch.zeros((), dtype=torch.float64, device=src.device) for name in models}
    s1 = torch.zeros((), dtype=torch.float64, device=src.device)
    s2 = torch.zeros((), dtype=torch.float64, device=src.device)
    for x, y in src.chunks(test=True):
        y64 = y.double()
        s1 += y64.sum()
        s2 += y64.pow(2).sum()
        for name, model in models.items():
            sse[name] += (model(x).flatten().double() - y64).pow(2).sum()
    m = src.n_test
    var = float(s2 / m - (s1 / m) ** 2)
    return {name: 1.0 - float(e / m) / var for name, e in sse.items()}
