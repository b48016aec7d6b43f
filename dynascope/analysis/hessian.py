"""The Hessian's spectrum from products alone: top/bottom eigenpairs, trace, spectral density.

Lanczos keeps every basis vector and re-orthogonalizes against all of them (twice), in float64, so no
ghost copies appear; it stops when every wanted Ritz pair has a residual ‖Hx − θx‖ ≤ tol·|θ|. With full
re-orthogonalization that residual is exact up to rounding, and it bounds the eigenvalue error.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor, nn

from dynascope.analysis.hvp import Batch, HessianOperator, LossFn, Mode, layer_blocks

MatVec = Callable[[Tensor], Tensor]
Which = Literal["LA", "SA"]
Progress = Callable[[int, int], None]  # (products done, products budget)
_BLOCK = 16


@dataclass
class Eigenpairs:
    values: np.ndarray  # (k,) in the order asked: largest first (LA) or most negative first (SA)
    vectors: Tensor  # (n, k) float64, unit norm
    residuals: np.ndarray  # (k,) ‖H v − λ v‖
    hvps: int
    converged: bool


@dataclass
class Lanczos:
    """A Lanczos run: the orthonormal basis Q (m × n, held in blocks of rows) and the tridiagonal (alpha, beta)."""

    blocks: list[Tensor]
    alpha: np.ndarray
    beta: np.ndarray  # beta[j] couples q_j and q_{j+1}; beta[-1] is the residual norm of the last step

    def combine(self, coefficients: Tensor) -> Tensor:
        """Qᵀ C: the vectors whose coordinates in the basis are C's columns (m × k)."""
        m = len(coefficients)
        return sum(block[: m - i * _BLOCK].T @ coefficients[i * _BLOCK : (i + 1) * _BLOCK] for i, block in enumerate(self.blocks))


def _tridiagonal_eigh(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(alpha) == 1:
        return alpha.copy(), np.ones((1, 1))
    return eigh_tridiagonal(alpha, beta[: len(alpha) - 1])


def _start_vector(n: int, v0: Tensor | None, seed: int, device: torch.device) -> Tensor:
    if v0 is not None:
        q = v0.detach().to(device=device, dtype=torch.float64).reshape(-1).clone()
    else:
        q = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)
    return q / q.norm()


def lanczos(
    matvec: MatVec,
    n: int,
    steps: int,
    *,
    v0: Tensor | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    stop: Callable[[np.ndarray, np.ndarray], bool] | None = None,
    progress: Progress | None = None,
    basis: torch.dtype = torch.float64,
) -> Lanczos:
    """Up to `steps` steps of full-re-orthogonalization Lanczos; `stop(alpha, beta)` may end it early.

    The vectors are float64; the basis is kept in `basis`: float32 halves its memory (m × n) and is as precise
    as the products of a float32 model, which round each vector to float32 before multiplying."""
    device = torch.device(device)
    steps = min(steps, n)
    # The basis grows a block at a time, each allocated but untouched until used, and never copied: a run that
    # stops early holds about the vectors it made.
    blocks: list[Tensor] = []
    alpha, beta = np.zeros(steps), np.zeros(steps)
    q = _start_vector(n, v0, seed, device)

    def done(j: int) -> Lanczos:
        return Lanczos(blocks, alpha[: j + 1], beta[: j + 1])

    for j in range(steps):
        if j % _BLOCK == 0:
            blocks.append(torch.empty(min(_BLOCK, steps - j), n, dtype=basis, device=device))
        blocks[-1][j % _BLOCK] = q
        w = matvec(q)
        alpha[j] = float(w @ q)
        w = w - alpha[j] * q - (beta[j - 1] * _row(blocks, j - 1).double() if j > 0 else 0.0)
        for _ in range(2):  # twice is enough (Kahan–Parlett)
            for b, block in enumerate(blocks):
                used = block[: j + 1 - b * _BLOCK]
                w = w - (used.T @ (used @ w.to(basis))).double()
        beta[j] = float(w.norm())
        if progress is not None:
            progress(j + 1, steps)
        scale = max(abs(alpha[: j + 1]).max(), beta[: j + 1].max(), 1e-300)
        if beta[j] <= 1e-10 * scale:  # an invariant subspace: the Ritz values are exact
            return done(j)
        if stop is not None and stop(alpha[: j + 1], beta[: j + 1]):
            return done(j)
        q = w / beta[j]
    return done(steps - 1)


def _row(blocks: list[Tensor], j: int) -> Tensor:
    return blocks[j // _BLOCK][j % _BLOCK]


def _wanted(theta: np.ndarray, k: int, which: Which) -> np.ndarray:
    order = np.argsort(-theta) if which == "LA" else np.argsort(theta)
    return order[:k]


def eigenpairs(
    matvec: MatVec,
    n: int,
    k: int,
    *,
    which: Which = "LA",
    tol: float = 1e-3,
    max_steps: int | None = None,
    v0: Tensor | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    basis: torch.dtype = torch.float64,
) -> Eigenpairs:
    """The k largest (LA) or smallest (SA) eigenpairs of a symmetric operator, each with ‖Hv−λv‖ ≤ tol·|λ|."""
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}")
    # The stop rule ends a run long before this in the common case (well-separated outliers); the ends
    # of a dense bulk, e.g. the most negative eigenvalues, can need many steps.
    max_steps = min(n, max_steps or max(10 * k + 100, 300))
    counted = [0]

    def counting(v: Tensor) -> Tensor:
        counted[0] += 1
        return matvec(v)

    def converged(alpha: np.ndarray, beta: np.ndarray) -> bool:
        if len(alpha) < k:
            return False
        theta, s = _tridiagonal_eigh(alpha, beta)
        sel = _wanted(theta, k, which)
        residual = np.abs(beta[-1] * s[-1, sel])
        return bool(np.all(residual <= tol * np.maximum(np.abs(theta[sel]), 1e-30)))

    run = lanczos(counting, n, max_steps, v0=v0, seed=seed, device=device, stop=converged, progress=progress, basis=basis)
    theta, s = _tridiagonal_eigh(run.alpha, run.beta)
    sel = _wanted(theta, min(k, len(theta)), which)
    residuals = np.abs(run.beta[-1] * s[-1, sel])
    vectors = run.combine(torch.from_numpy(s[:, sel]).to(run.blocks[0])).double()
    ok = len(sel) == k and bool(np.all(residuals <= tol * np.maximum(np.abs(theta[sel]), 1e-30)))
    exact = run.beta[-1] <= 1e-10 * max(np.abs(run.alpha).max(), 1e-300)
    return Eigenpairs(theta[sel], vectors, residuals, counted[0], ok or (exact and len(sel) == k))


@dataclass
class TraceEstimate:
    value: float
    stderr: float
    hvps: int
    method: str


def _rademacher(n: int, count: int, gen: torch.Generator, device: torch.device) -> Tensor:
    return (torch.randint(0, 2, (count, n), generator=gen, dtype=torch.int8).to(torch.float64) * 2 - 1).to(device)


def hutchinson_trace(
    matvec: MatVec,
    n: int,
    *,
    rel_tol: float = 1e-2,
    min_probes: int = 10,
    max_probes: int = 1000,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> TraceEstimate:
    """tr H ≈ mean of zᵀHz over Rademacher z, stopped when the standard error ≤ rel_tol·|mean|."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    samples: list[float] = []
    while len(samples) < max_probes:
        z = _rademacher(n, 1, gen, device)[0]
        samples.append(float(z @ matvec(z)))
        if len(samples) >= min_probes:
            mean, se = float(np.mean(samples)), float(np.std(samples, ddof=1) / np.sqrt(len(samples)))
            if se <= rel_tol * abs(mean):
                break
    arr = np.asarray(samples)
    return TraceEstimate(float(arr.mean()), float(arr.std(ddof=1) / np.sqrt(len(arr))), len(arr), "hutchinson")


def hutchpp_trace(matvec: MatVec, n: int, *, hvps: int = 300, seed: int = 0, device: torch.device | str = "cpu") -> TraceEstimate:
    """Hutch++ (Meyer et al. 2021): the trace on a sketched top subspace exactly, Hutchinson on the rest.

    The standard error is that of the Hutchinson part (the exact part has none).
    """
    device = torch.device(device)
    third = max(1, hvps // 3)
    gen = torch.Generator().manual_seed(seed)
    sketch = _rademacher(n, third, gen, device)
    q, _ = torch.linalg.qr(torch.stack([matvec(s) for s in sketch], dim=1))
    exact = sum(float(q[:, i] @ matvec(q[:, i])) for i in range(q.shape[1]))
    rest = []
    for g in _rademacher(n, hvps - 2 * third, gen, device):
        g = g - q @ (q.T @ g)
        rest.append(float(g @ matvec(g)))
    arr = np.asarray(rest)
    return TraceEstimate(exact + float(arr.mean()), float(arr.std(ddof=1) / np.sqrt(len(arr))), hvps, "hutch++")


@dataclass
class SpectralDensity:
    grid: np.ndarray  # evenly spaced points plus every quadrature node
    density: np.ndarray  # integrates to 1 over the grid (up to the tails cut off)
    nodes: np.ndarray  # (probes, steps) Ritz values
    weights: np.ndarray  # (probes, steps) quadrature weights, each row sums to 1
    sigma: float
    moments: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (value, stderr)
    hvps: int = 0


def spectral_density(
    matvec: MatVec,
    n: int,
    *,
    probes: int = 10,
    steps: int = 50,
    grid_points: int = 400,
    sigma: float | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature with Gaussian broadening (Ghorbani et al. 2019; Lin et al. 2016).

    Each probe's quadrature is exact for polynomials of degree < 2·steps, so its first two moments are
    vᵀHv and ‖Hv‖² of a unit probe: unbiased estimates of tr(H)/n and tr(H²)/n, with their standard errors.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    steps = min(steps, n)
    nodes, weights = np.zeros((probes, steps)), np.zeros((probes, steps))
    done = [0]

    def tick(_: int, __: int) -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], probes * steps)

    for p in range(probes):
        v = _rademacher(n, 1, gen, device)[0]
        run = lanczos(matvec, n, steps, v0=v, device=device, progress=tick)
        theta, s = _tridiagonal_eigh(run.alpha, run.beta)
        m = len(theta)
        nodes[p, :m], weights[p, :m] = theta, s[0] ** 2
    lo, hi = nodes[weights > 0].min(), nodes[weights > 0].max()
    if sigma is None:
        # Outliers far out make the span, and a span-scaled broadening would smear the bulk over them;
        # so broaden once coarsely to find the bulk's edge, then again at the bulk's own scale.
        coarse = max(hi - lo, 1e-12) / steps
        edge = _edge(*_broaden(nodes, weights, lo, hi, coarse, grid_points), coarse, n)
        sigma = max(edge - lo, 1e-6 * max(hi - lo, 1e-12)) / steps
    grid, density = _broaden(nodes, weights, lo, hi, sigma, grid_points)
    m1 = (weights * nodes).sum(1)
    m2 = (weights * nodes**2).sum(1)
    se = lambda a: float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")  # noqa: E731
    moments = {"trace_over_n": (float(m1.mean()), se(m1)), "trace_sq_over_n": (float(m2.mean()), se(m2))}
    return SpectralDensity(grid, density, nodes, weights, sigma, moments, done[0])


# ---- the model-level API --------------------------------------------------------------------------------


def hessian_top_eigenpairs(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Batch],
    k: int = 5,
    tol: float = 1e-3,
    *,
    which: Which = "LA",
    mode: Mode = "eval",
    v0: Tensor | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> Eigenpairs:
    op = HessianOperator(model, loss_fn, batches, mode=mode, seed=seed)
    return eigenpairs(op, op.n, k, which=which, tol=tol, v0=v0, seed=seed, device=op.device, progress=progress, basis=op.dtype)


def hessian_trace(
    model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], *, hvps: int = 300, mode: Mode = "eval", seed: int = 0
) -> TraceEstimate:
    op = HessianOperator(model, loss_fn, batches, mode=mode, seed=seed)
    return hutchpp_trace(op, op.n, hvps=hvps, seed=seed, device=op.device)


def hessian_spectral_density(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Batch],
    *,
    probes: int = 10,
    steps: int = 50,
    mode: Mode = "eval",
    seed: int = 0,
    progress: Progress | None = None,
) -> SpectralDensity:
    op = HessianOperator(model, loss_fn, batches, mode=mode, seed=seed)
    return spectral_density(op, op.n, probes=probes, steps=steps, seed=seed, device=op.device, progress=progress)


def layerwise_top_eigenvalues(
    model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], *, tol: float = 1e-3, mode: Mode = "eval"
) -> dict[str, float]:
    """λmax of each layer's diagonal block of the Hessian: where the sharpness sits."""
    out = {}
    for layer, names in layer_blocks(model).items():
        op = HessianOperator(model, loss_fn, batches, mode=mode, params=names)
        out[layer] = float(eigenpairs(op, op.n, 1, tol=tol, device=op.device).values[0])
    return out


def _broaden(nodes: np.ndarray, weights: np.ndarray, lo: float, hi: float, sigma: float, points: int) -> tuple[np.ndarray, np.ndarray]:
    keep = weights > 0
    theta, w = nodes[keep], weights[keep]
    # The nodes themselves are grid points: a narrow peak (an outlier) is never stepped over.
    grid = np.unique(np.concatenate([np.linspace(lo - 3 * sigma, hi + 3 * sigma, points), theta]))
    density = (w[None, :] * np.exp(-0.5 * ((grid[:, None] - theta[None, :]) / sigma) ** 2)).sum(1)
    return grid, density / (len(nodes) * sigma * np.sqrt(2 * np.pi))


def _edge(grid: np.ndarray, density: np.ndarray, sigma: float, n: int) -> float:
    floor = 0.5 / (n * sigma * np.sqrt(2 * np.pi))
    peak = int(np.argmax(density))
    below = np.nonzero(density[peak:] < floor)[0]
    return float(grid[peak + below[0]] if len(below) else grid[-1])


def bulk_edge(density: SpectralDensity, n: int) -> float:
    """The right end of the bulk: where the density, followed right from its peak, first holds less than
    half an eigenvalue's worth (one eigenvalue adds a Gaussian of mass 1/n and height 1/(n·σ·√(2π))).
    """
    return _edge(density.grid, density.density, density.sigma, n)


def count_beyond(density: SpectralDensity, n: int, edge: float) -> float:
    """Estimated number of eigenvalues above `edge`: n times the quadrature mass beyond it."""
    return float(n * np.mean(np.sum(np.where(density.nodes > edge, density.weights, 0.0), axis=1)))
