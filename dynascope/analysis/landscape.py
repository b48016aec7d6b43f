"""Loss landscapes: random filter-normalized directions, surfaces and lines through weight space, and the
plane of a training trajectory. Pure PyTorch numerics; knows nothing of jobs, queues or storage.

Conventions (stored with every result):
- a point is θ = centre + Σ_k c_k·d_k over named tensors (parameters, and for interpolation, float buffers);
- a 2-D surface is `surface[i, j] = L(centre + xs[i]·d1 + ys[j]·d2)` ('ij' indexing); grids are symmetric
  with an odd number of points, so the centre is a grid point exactly;
- L is the mean loss over a fixed evaluation set, the model in eval mode (BatchNorm with the centre's running
  statistics) unless `batch_norm="recompute"`.
"""

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

Weights = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
Normalization = Literal["filter", "layer", "none"]

# The precomputed outputs of the input layer (see PlaneEvaluator) may use at most this much memory: they grow with
# the sample, and past this a point's forward in batches costs less memory than they would.
PRECOMPUTE_BYTES = 128 * 2**20
# A tuned batch holds at most this many examples, so a point's memory does not grow with the sample.
MAX_BATCH = 1024


def weights_of(model: nn.Module) -> Weights:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def random_direction(
    weights: Weights,
    generator: torch.Generator,
    normalization: Normalization = "filter",
    include_bias_bn: bool = False,
) -> Weights:
    """A Gaussian direction scaled like the weights (Li et al. 2018, "Visualizing the Loss Landscape").

    `filter`: each slice along dim 0 (a convolution's output filter, a linear layer's neuron, an embedding's
    row) gets the norm of the same slice of the weights; `layer`: each tensor gets the tensor's norm; `none`:
    the raw N(0, 1) draw. Tensors of dim ≤ 1 (biases, normalization scales) get a zero direction unless
    `include_bias_bn`, in which case each is treated as one filter. The draw happens on the CPU in float32, so
    one seed gives the same direction on any device.
    """
    out = {}
    for name, w in weights.items():
        d = torch.randn(w.shape, generator=generator, dtype=torch.float32).to(device=w.device, dtype=w.dtype)
        if w.dim() <= 1 and not include_bias_bn:
            d.zero_()
        elif normalization == "filter" and w.dim() > 1:
            rows_w = w.reshape(w.shape[0], -1).norm(dim=1)
            rows_d = d.reshape(d.shape[0], -1).norm(dim=1)
            d.mul_((rows_w / rows_d.clamp_min(1e-30)).view(-1, *([1] * (w.dim() - 1))))
        elif normalization != "none":
            d.mul_(w.norm() / d.norm().clamp_min(1e-30))
        out[name] = d
    return out


def dot(a: Weights, b: Weights) -> float:
    return float(sum((a[k].double() * b[k].double()).sum() for k in a))


def random_directions(
    weights: Weights,
    count: int,
    seed: int,
    normalization: Normalization = "filter",
    include_bias_bn: bool = False,
    orthogonalize: bool = False,
) -> list[Weights]:
    """`count` directions from one seeded generator, in order; with `orthogonalize`, each later direction has
    its components along the earlier ones removed (Gram–Schmidt) and is scaled back to its former norm, so the
    per-filter norms then hold only approximately."""
    gen = torch.Generator().manual_seed(seed)
    dirs = [random_direction(weights, gen, normalization, include_bias_bn) for _ in range(count)]
    if orthogonalize:
        for k in range(1, count):
            norm = math.sqrt(dot(dirs[k], dirs[k]))
            for prev in dirs[:k]:
                coef = dot(dirs[k], prev) / dot(prev, prev)
                dirs[k] = {n: t - coef * prev[n] for n, t in dirs[k].items()}
            scale = norm / math.sqrt(dot(dirs[k], dirs[k]))
            dirs[k] = {n: t * scale for n, t in dirs[k].items()}
    return dirs


def symmetric_grid(steps: int, span: float) -> np.ndarray:
    """`steps` points from -span to span, the middle one exactly 0."""
    if steps < 1 or steps % 2 == 0:
        raise ValueError(f"a symmetric grid needs an odd number of points (got {steps})")
    if steps == 1:
        return np.zeros(1)
    half = (steps - 1) // 2
    return span * (np.arange(-half, half + 1, dtype=np.float64) / half)


@dataclass
class PointValue:
    loss: float
    accuracy: float | None


class _Precomputed(nn.Module):
    """Stands in for the input layer: its output at any point of the plane, from outputs computed once."""

    def __init__(self, base: Tensor, along: list[Tensor]) -> None:
        super().__init__()
        self.base, self.along = base, along
        self.rows = slice(None)
        self.coeffs: Sequence[float] = ()

    def forward(self, _: Tensor) -> Tensor:
        base = self.base[self.rows]
        out: Tensor | None = None
        for c, z in zip(self.coeffs, self.along):
            if c:
                out = torch.add(base, z[self.rows], alpha=c) if out is None else out.add_(z[self.rows], alpha=c)
        return base.clone() if out is None else out  # a copy: the next layer may work in place


class PlaneEvaluator:
    """Loss (and accuracy) on (x, y) at centre + Σ c_k·d_k for many coefficient vectors c, in place.

    The model's tensors are overwritten at each point and restored by `restore()` (or on leaving `session()`).
    - When the first layer reads the raw input and is a linear map of its weights (Linear, Conv1d/2d/3d), its
      output is linear in the coefficients: it can be computed once per direction and combined at each point
      (exact up to float rounding). That saves the layer's cost but adds passes over its output, so
      `precompute=None` times both and keeps the faster.
    - `batch_size=None` times a few batch sizes (≤ MAX_BATCH) at the centre and keeps the fastest.
    - On a CPU, convolutional models run channels-last (oneDNN's fast path); `compile` compiles forward, loss
      and accuracy into one graph (worth its compile time on large grids).
    - `accuracy` (classification targets only) is counted from the same forward.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        x: Tensor,
        y: Tensor,
        centre: Weights,
        directions: Sequence[Weights],
        *,
        batch_size: int | None = None,
        batch_norm: Literal["eval", "recompute"] = "eval",
        channels_last: bool | None = None,
        compile: bool = False,
        precompute: bool | None = None,
        accuracy: bool = True,
    ) -> None:
        self.model, self.loss_fn, self.batch_norm = model, loss_fn, batch_norm
        self.directions = list(directions)
        state = dict(model.named_parameters()) | dict(model.named_buffers())
        self._saved = {n: state[n].detach().clone() for n in centre}
        self._bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._bn_saved = [({k: v.clone() for k, v in m.state_dict().items()}, m.momentum) for m in self._bn]
        if channels_last is None:
            on_cpu = next(model.parameters()).device.type == "cpu"
            channels_last = on_cpu and any(isinstance(m, nn.Conv2d) for m in model.modules())
        self._channels_last = channels_last
        if channels_last:
            model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
        self.x, self.y = x, y
        moving = [n for n in centre if any(n in d and bool(d[n].any()) for d in self.directions)]
        # a copy: a centre given as the model's own tensors (state_dict()) would move with them
        self._state, self._centre_all = state, {n: t.detach().clone() for n, t in centre.items()}
        self._swap: tuple[nn.Module, str, nn.Module, _Precomputed] | None = None
        own: set[str] = set()
        with torch.no_grad():
            for n in centre:  # tensors that move are reset to the centre at each point, the others only here
                state[n].copy_(centre[n])
            if precompute is not False and batch_norm == "eval" and not compile:  # (compiled: retraced per point)
                own = self._precompute_input_layer(self._centre_all)
        self._plans = {False: moving, True: [n for n in moving if n not in own]}
        self.accuracy = accuracy and not y.is_floating_point()
        self._batch_sums: Callable[[Tensor, Tensor], Tensor] = torch.compile(self._sums) if compile else self._sums
        self.precomputed = bool(own)
        self._use(self.precomputed)
        largest = min(len(y), MAX_BATCH)
        candidates = [batch_size] if batch_size else [largest, *(b for b in (512, 256, 128) if b < largest)]
        self.batch_size, self.seconds_per_point = self._tune(candidates)
        if self.precomputed and precompute is None and not self._precompute_clearly_cheaper():
            # a cheap input layer may be faster to run than to combine: time both
            seconds = {True: self.seconds_per_point, False: math.inf}
            for _ in range(3):
                seconds[False] = min(seconds[False], self._seconds_per_point(False, repeats=1))
            self._use(seconds[True] <= seconds[False])
            self.seconds_per_point = min(seconds.values())

    def _precompute_clearly_cheaper(self) -> bool:
        """A linear input layer costs in_features multiply-adds per output element; combining costs one pass
        per direction and one for the centre. Far apart, timing would only add the machine's noise to the
        choice (seen on a shared 2-core machine: a noisy timing once kept a 64-input layer as it was)."""
        assert self._swap is not None
        layer = self._swap[2]
        return isinstance(layer, nn.Linear) and layer.in_features >= 16 * (1 + len(self.directions))

    def _use(self, precomputed: bool) -> None:
        if self._swap is not None:
            parent, attr, layer, stand_in = self._swap
            setattr(parent, attr, stand_in if precomputed else layer)
        names = self._plans[precomputed]
        self.precomputed = precomputed
        self._targets = [self._state[n] for n in names]
        self._centre = [self._centre_all[n].to(self._state[n]) for n in names]
        self._along = [[d[n].to(self._state[n]) if n in d else torch.zeros_like(self._state[n]) for n in names] for d in self.directions]

    def _seconds_per_point(self, precomputed: bool | None = None, repeats: int = 3) -> float:
        """The best of a few evaluations at the centre (the first one warms up, or compiles)."""
        if precomputed is not None:
            self._use(precomputed)
        self(())
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            self(())
            best = min(best, time.perf_counter() - start)
        return best

    def _tune(self, candidates: list[int]) -> tuple[int, float]:
        """The fastest batch size and its seconds per point; candidates are timed in turns, best of three,
        against a noisy machine."""
        timings = dict.fromkeys(candidates, math.inf)
        for _ in range(3 if len(candidates) > 1 else 1):
            for size in list(timings):
                self.batch_size = size
                try:
                    timings[size] = min(timings[size], self._seconds_per_point(repeats=1))
                except torch.OutOfMemoryError:
                    del timings[size]
        best = min(timings, key=timings.__getitem__)
        self.batch_size = best
        return best, timings[best]

    def _precompute_input_layer(self, centre: Weights) -> set[str]:
        """Swap the input layer for its precomputed outputs when that is exact and fits; its tensors' names.

        The input layer is the one linear layer that reads the raw input, or a reshape of it (a Flatten or a
        view before it, as in the MLPs this project builds), exactly once."""
        x0 = self.x[:2]
        calls: dict[nn.Module, int] = {}
        reads_input: dict[nn.Module, Tensor] = {}

        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            calls[module] = calls.get(module, 0) + 1
            inp = args[0] if args else None
            if isinstance(inp, Tensor) and inp.untyped_storage().data_ptr() == x0.untyped_storage().data_ptr():
                reads_input[module] = inp

        handles = [m.register_forward_pre_hook(hook) for m in self.model.modules() if m is not self.model]
        try:
            self.model.eval()
            self.model(x0)
        finally:
            for h in handles:
                h.remove()
        linear = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
        candidates = [m for m in reads_input if isinstance(m, linear)]
        if len(candidates) != 1 or calls[candidates[0]] != 1:
            return set()
        layer = candidates[0]
        seen = reads_input[layer]
        if seen.numel() != x0.numel() or not torch.equal(seen, x0.reshape(seen.shape)):  # not a plain reshape of x
            return set()
        layer_input = self.x.reshape(len(self.x), *seen.shape[1:])
        path = next(n for n, m in self.model.named_modules() if m is layer)
        own = {f"{path}.{k}": k for k, _ in layer.named_parameters(recurse=False)}
        if any(n not in centre for n in own):
            return set()
        out_bytes = layer(seen).numel() // len(x0) * len(self.x) * self.x.element_size()
        if out_bytes * (1 + len(self.directions)) > PRECOMPUTE_BYTES:
            return set()
        params = dict(layer.named_parameters(recurse=False))

        def output(values: dict[str, Tensor]) -> Tensor:
            return torch.func.functional_call(layer, values, (layer_input,))

        base = output({k: centre[n].to(params[k]) for n, k in own.items()})
        along = [
            output({k: d[n].to(params[k]) if n in d else torch.zeros_like(params[k]) for n, k in own.items()}) for d in self.directions
        ]
        parent_path, _, attr = path.rpartition(".")
        parent = self.model.get_submodule(parent_path)
        stand_in = _Precomputed(base, along)
        setattr(parent, attr, stand_in)
        self._swap = (parent, attr, layer, stand_in)
        return set(own)

    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self.y), self.batch_size):
            rows = slice(start, start + self.batch_size)
            if self.precomputed:
                self._swap[3].rows = rows  # type: ignore[index]
            yield self.x[rows], self.y[rows]

    @torch.no_grad()
    def __call__(self, coeffs: Sequence[float]) -> PointValue:
        if self._targets:
            torch._foreach_copy_(self._targets, self._centre)
            for c, d in zip(coeffs, self._along):
                if c:
                    torch._foreach_add_(self._targets, d, alpha=float(c))
        if self.precomputed:
            self._swap[3].coeffs = coeffs  # type: ignore[index]
        if self.batch_norm == "recompute" and self._bn:
            self._recompute_batch_norm()
        self.model.eval()
        loss = correct = 0.0
        for x, y in self._batches():
            batch = self._batch_sums(x, y).tolist()
            loss += batch[0] * len(y)
            correct += batch[1]
        return PointValue(loss / len(self.y), correct / self.y.numel() if self.accuracy else None)

    def _sums(self, x: Tensor, y: Tensor) -> Tensor:
        """[mean loss, correct predictions] of one batch (counts are exact in float32 up to 2**24)."""
        out = self.model(x)
        loss = self.loss_fn(out, y)
        correct = (out.argmax(-1) == y).sum().to(loss.dtype) if self.accuracy else torch.zeros_like(loss)
        return torch.stack([loss, correct])

    def _recompute_batch_norm(self) -> None:
        """BatchNorm statistics of this point: the cumulative average over the evaluation set's batches."""
        for m in self._bn:
            m.reset_running_stats()
            m.momentum = None
        self.model.train()
        for x, _ in self._batches():
            self.model(x)

    @torch.no_grad()
    def restore(self) -> None:
        if self._swap is not None:
            parent, attr, layer, _ = self._swap
            setattr(parent, attr, layer)
            self._swap = None
            self.precomputed = False
        state = dict(self.model.named_parameters()) | dict(self.model.named_buffers())
        for m, (saved, momentum) in zip(self._bn, self._bn_saved):
            m.load_state_dict(saved)
            m.momentum = momentum
        if self._channels_last:
            self.model.to(memory_format=torch.contiguous_format)
        for n, t in self._saved.items():
            state[n].copy_(t)

    @contextmanager
    def session(self) -> Iterator["PlaneEvaluator"]:
        try:
            yield self
        finally:
            self.restore()


def coarse_to_fine(n: int) -> list[int]:
    """Indices 0..n-1 ordered so that every prefix covers the axis evenly: ends and centre, then halvings."""
    order: list[int] = []
    seen: set[int] = set()
    stride = 1 << max(0, (n - 1).bit_length() - 1)
    while True:
        for i in [*range(0, n, stride), n - 1, (n - 1) // 2]:
            if i not in seen:
                seen.add(i)
                order.append(i)
        if stride == 1:
            return order
        stride //= 2


def grid_order(n: int, m: int) -> list[tuple[int, int]]:
    """All (i, j) of an n×m grid, coarse levels first, so a partial surface already spans the whole plane."""
    rank_i = {i: r for r, i in enumerate(coarse_to_fine(n))}
    rank_j = {j: r for r, j in enumerate(coarse_to_fine(m))}
    return sorted(((i, j) for i in range(n) for j in range(m)), key=lambda p: (max(rank_i[p[0]], rank_j[p[1]]), p))


@dataclass
class Surface:
    xs: np.ndarray
    ys: np.ndarray
    loss: np.ndarray  # [len(xs), len(ys)]; NaN where not evaluated (adaptive) or not finite
    accuracy: np.ndarray | None
    evaluated: np.ndarray  # bool mask of the points actually computed (the rest interpolated)

    @classmethod
    def empty(cls, xs: np.ndarray, ys: np.ndarray) -> "Surface":
        return cls(xs, ys, np.full((len(xs), len(ys)), np.nan), None, np.zeros((len(xs), len(ys)), bool))

    def record(self, i: int, j: int, value: PointValue) -> None:
        self.loss[i, j] = value.loss if math.isfinite(value.loss) else np.nan
        if value.accuracy is not None:
            if self.accuracy is None:
                self.accuracy = np.full_like(self.loss, np.nan)
            self.accuracy[i, j] = value.accuracy
        self.evaluated[i, j] = True


Progress = Callable[[list[tuple[int, int]], Surface], None]


def loss_surface(
    evaluate: Callable[[Sequence[float]], PointValue],
    xs: np.ndarray,
    ys: np.ndarray | None = None,
    *,
    chunk: int = 64,
    progress: Progress | None = None,
) -> Surface:
    """L on the grid xs × ys (1-D when ys is None: the result has shape [len(xs), 1]), coarse levels first;
    `progress` gets each finished chunk of points and the partial surface (it may raise to stop)."""
    ys_ = np.zeros(1) if ys is None else ys
    surf = Surface.empty(xs, ys_)
    points = grid_order(len(xs), len(ys_))
    for start in range(0, len(points), chunk):
        done = points[start : start + chunk]
        for i, j in done:
            surf.record(i, j, evaluate((xs[i], ys_[j]) if ys is not None else (xs[i],)))
        if progress is not None:
            progress(done, surf)
    return surf


def adaptive_surface(
    evaluate: Callable[[Sequence[float]], PointValue],
    xs: np.ndarray,
    ys: np.ndarray,
    *,
    budget: float = 0.25,
    tol: float = 0.002,
    progress: Progress | None = None,
) -> Surface:
    """A fine-grid surface from a fraction of its points.

    A coarse grid (every s-th point) is interpolated by a bicubic spline in log space (losses vary over
    decades). One point near the middle of each coarse cell is then computed and compared with the spline;
    cells whose relative miss exceeds `tol` are computed in full, worst first, while the budget (a fraction
    of all points; the coarse grid and the checks are always computed) lasts. Every other point gets the
    spline's value corrected by the misses at the computed points around it, interpolated linearly (this
    removes most of the ringing a sharp feature leaves in a spline); `evaluated` marks the computed points.
    """
    from scipy.interpolate import LinearNDInterpolator, RectBivariateSpline

    n, m = len(xs), len(ys)
    s = next((s for s in (5, 4, 3, 2) if (n - 1) % s == 0 and (m - 1) % s == 0 and min(n - 1, m - 1) // s >= 8), 0)
    if not s:
        raise ValueError(f"the adaptive mode needs a grid of k·s + 1 points per axis with s in 2..5, k ≥ 8 (got {n}×{m})")
    surf = Surface.empty(xs, ys)

    def compute(points: list[tuple[int, int]]) -> None:
        todo = [p for p in points if not surf.evaluated[p]]
        for i, j in todo:
            surf.record(i, j, evaluate((xs[i], ys[j])))
        if progress is not None and todo:
            progress(todo, surf)

    ci, cj = np.arange(0, n, s), np.arange(0, m, s)
    compute([(i, j) for i in ci for j in cj])
    coarse = np.log(np.maximum(surf.loss[np.ix_(ci, cj)], 1e-30))

    filled = np.exp(RectBivariateSpline(xs[ci], ys[cj], coarse, kx=3, ky=3)(xs, ys))
    middles = [(i + s // 2, j + s // 2) for i in ci[:-1] for j in cj[:-1]]
    compute(middles)
    miss = {(i - s // 2, j - s // 2): abs(surf.loss[i, j] - filled[i, j]) / max(abs(surf.loss[i, j]), 1e-30) for i, j in middles}
    allowed = int(budget * n * m)
    for (i0, j0), err in sorted(miss.items(), key=lambda kv: -kv[1]):
        if not err > tol:  # NaN (a non-finite point) is refined as well
            if not np.isnan(err):
                break
        block = [(i, j) for i in range(i0, i0 + s + 1) for j in range(j0, j0 + s + 1)]
        new = [p for p in block if not surf.evaluated[p]]
        if int(surf.evaluated.sum()) + len(new) > allowed:
            break
        compute(new)
    # the spline's misses at the computed points, interpolated linearly in between, correct the rest
    known = np.argwhere(surf.evaluated)
    miss_log = np.log(np.maximum(surf.loss[surf.evaluated], 1e-30)) - np.log(filled[surf.evaluated])
    fine = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1)
    correction = LinearNDInterpolator(np.c_[xs[known[:, 0]], ys[known[:, 1]]], np.nan_to_num(miss_log), fill_value=0.0)(fine)
    surf.loss = np.where(surf.evaluated, surf.loss, filled * np.exp(correction))
    return surf


def interpolation_directions(start: Weights, end: Weights) -> Weights:
    return {n: end[n] - start[n] for n in start}


@dataclass
class TrajectoryPlane:
    directions: list[Weights]  # unit-norm principal directions, as tensors shaped like the weights
    coords: np.ndarray  # [T, 2]: each checkpoint's (checkpoint - final) projected on the directions
    explained_variance_ratio: np.ndarray
    singular_values: np.ndarray


def trajectory_pca(
    checkpoints: Sequence[Callable[[str], Tensor]], final: Callable[[str], Tensor], names: Sequence[str], components: int = 2
) -> TrajectoryPlane:
    """Principal directions of the path (checkpoint − final weights), as in Li et al.: PCA of the centred
    differences, the points projected without centring so the final weights sit at the origin.

    Works from the T×T Gram matrix of the differences, accumulated one tensor at a time (each checkpoint is
    a reader name → tensor, e.g. a safetensors file), so memory stays at T × the largest tensor, never T × P.
    """
    t = len(checkpoints)
    if t < components + 1:
        raise ValueError(f"a trajectory plane needs at least {components + 1} checkpoints (got {t})")

    def diffs(name: str) -> Tensor:
        ref = final(name).double().flatten()
        return torch.stack([c(name).double().flatten().to(ref.device) - ref for c in checkpoints])

    gram = torch.zeros(t, t, dtype=torch.float64)
    for name in names:
        m = diffs(name)
        gram += (m @ m.T).cpu()
    centring = torch.eye(t, dtype=torch.float64) - 1.0 / t
    lam, u = torch.linalg.eigh(centring @ gram @ centring)
    lam, u = lam.flip(0).clamp_min(0), u.flip(1)
    sv = lam.sqrt()
    k = components
    signs = torch.sign(u[u[:, :k].abs().argmax(0), torch.arange(k)])
    u = u[:, :k] * signs
    weights = (centring @ u) / sv[:k]  # direction_k = Σ_t weights[t, k]·(checkpoint_t − final)
    directions: list[Weights] = [{} for _ in range(k)]
    for name in names:
        m = diffs(name)
        shape = final(name).shape
        for c in range(k):
            directions[c][name] = (weights[:, c].to(m.device) @ m).reshape(shape).float()
    coords = (gram @ weights).numpy()
    total = float(lam.sum())
    return TrajectoryPlane(directions, coords, (lam[:k] / total).numpy() if total > 0 else np.zeros(k), sv[:k].numpy())
