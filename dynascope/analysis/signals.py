"""Opposing signals: groups of training examples whose gradients pull the weights in opposite directions and
whose losses swing out of phase (Rosenfeld & Risteski, "Outliers with Opposing Signals Have an Outsized
Effect on Neural Network Optimization", ICLR 2024). The paper picks the examples with the largest one-step
loss change and names the groups by eye; this module does it automatically. Pure PyTorch (+ SciPy's
hierarchical clustering).

detect(): the top-k examples by |Δℓ_i| with a robust z-score above a threshold → their per-example gradients
(k only) → average-linkage clustering on cosine distance → pairs of clusters whose mean gradients point in
opposite directions → each pair expanded to the whole probe set by two JVPs (g_i·ĝ_A and g_i·ĝ_B for every
example, no per-example gradients). antiphase() then scores a pair by the correlation of the two groups'
loss differences around the step: real opposing signals swing out of phase (≈ −1), merely opposite
gradients do not.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

LossFn = Callable[[Tensor, Tensor], Tensor]


def heavy_tail_share(delta: Tensor | np.ndarray, fraction: float = 0.01) -> float:
    """The share of Σ|Δℓ_i| carried by the top `fraction` of examples (sums in float64; computed every step)."""
    a = np.abs(delta.detach().cpu().numpy() if isinstance(delta, Tensor) else delta)
    top = max(1, int(round(fraction * len(a))))
    total = float(a.sum(dtype=np.float64))
    return float(np.partition(a, len(a) - top)[len(a) - top :].sum(dtype=np.float64)) / total if total > 0 else 0.0


def robust_z(values: Tensor) -> Tensor:
    median = values.median()
    mad = (values - median).abs().median() * 1.4826
    return (values - median) / (mad + 1e-12)


def _params(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    return {n: p.detach() for n, p in model.named_parameters()}, {n: b.detach() for n, b in model.named_buffers()}


def example_gradients(model: nn.Module, each: LossFn, x: Tensor, y: Tensor) -> Tensor:
    """[k, P] per-example gradients of the given (few) examples (`each`: per-example losses)."""
    params, buffers = _params(model)

    def one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return each(functional_call(model, (p, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0))[0]

    pe = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([pe[n].flatten(1) for n in params], 1)


def projections(model: nn.Module, each: LossFn, x: Tensor, y: Tensor, direction: Tensor) -> Tensor:
    """g_i·u for every example at once: one forward-mode JVP of the per-example losses along u."""
    params, buffers = _params(model)
    tangent, start = {}, 0
    for n, p in params.items():
        tangent[n] = direction[start : start + p.numel()].view_as(p).to(p.dtype)
        start += p.numel()

    def losses(p: dict[str, Tensor]) -> Tensor:
        return each(functional_call(model, (p, buffers), (x,)), y)

    return jvp(losses, (params,), (tangent,))[1]


@dataclass
class Pair:
    a: list[int]  # outlier ids (rows of the probe set) in group A
    b: list[int]
    cos: float  # cosine of the two groups' mean gradients
    intra_a: float  # mean pairwise cosine inside each group
    intra_b: float
    mean_delta_a: float
    mean_delta_b: float
    a_star: list[int] = field(default_factory=list)  # the whole probe set's examples that side with A
    b_star: list[int] = field(default_factory=list)
    antiphase: float | None = None  # set once the window after the step has been seen
    direction: Tensor | None = None  # ĝ_A − ĝ_B (unit mean gradients), in named_parameters order


@dataclass
class Detection:
    outliers: list[int]
    heavy_tail: float
    clusters: list[int]  # their sizes
    pairs: list[Pair]


@dataclass
class DetectSettings:
    top_k: int = 48
    z_min: float = 3.0
    cut: float = 0.8  # cosine distance at which the dendrogram is cut
    min_size: int = 3
    tau: float = 0.3  # pairs need cos(ḡ_A, ḡ_B) ≤ −tau
    z_expand: float = 3.0


def _intra(unit: Tensor, members: np.ndarray) -> float:
    k = len(members)
    block = unit[members] @ unit[members].T
    return float((block.sum() - k) / (k * (k - 1))) if k > 1 else 1.0


def detect(model: nn.Module, each: LossFn, x: Tensor, y: Tensor, delta: Tensor, cfg: DetectSettings) -> Detection:
    """Opposing pairs among the examples whose loss moved most (`delta`: Δℓ_i over the probe set (x, y);
    `each`: the per-example losses of a batch's outputs)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    size = delta.abs().double().cpu()
    z = robust_z(size)
    order = torch.argsort(size, descending=True)[: cfg.top_k]
    picked = [int(i) for i in order if z[i] >= cfg.z_min]
    found = Detection(picked, heavy_tail_share(delta), [], [])
    if len(picked) < 2 * cfg.min_size:
        return found
    training = model.training
    model.eval()
    try:
        rows = torch.tensor(picked, device=x.device)
        g = example_gradients(model, each, x[rows], y[rows]).double()
        unit = torch.nn.functional.normalize(g, dim=1)
        distance = (1 - unit @ unit.T).clamp_min(0).cpu().numpy()
        np.fill_diagonal(distance, 0.0)
        labels = fcluster(linkage(squareform(distance, checks=False), method="average"), t=cfg.cut, criterion="distance")
        clusters = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        clusters = [c for c in clusters if len(c) >= cfg.min_size]
        found.clusters = [len(c) for c in clusters]
        means = [g[c].mean(0) for c in clusters]
        candidates = sorted(
            (float(torch.nn.functional.cosine_similarity(means[i], means[j], dim=0)), i, j)
            for i in range(len(clusters))
            for j in range(i + 1, len(clusters))
        )
        used: set[int] = set()
        for cos, i, j in candidates:
            if cos > -cfg.tau or i in used or j in used:
                continue
            used |= {i, j}
            score_a = projections(model, each, x, y, torch.nn.functional.normalize(means[i], dim=0)).double().cpu()
            score_b = projections(model, each, x, y, torch.nn.functional.normalize(means[j], dim=0)).double().cpu()
            a = [picked[k] for k in clusters[i]]
            b = [picked[k] for k in clusters[j]]
            moves = delta.double().cpu()
            mean_a, mean_b = float(moves[a].mean()), float(moves[b].mean())
            # an example sides with A when its gradient does and its loss moved the way A's did
            side_a = (robust_z(score_a) >= cfg.z_expand) & (score_b <= 0) & (torch.sign(moves) == np.sign(mean_a))
            side_b = (robust_z(score_b) >= cfg.z_expand) & (score_a <= 0) & (torch.sign(moves) == np.sign(mean_b))
            found.pairs.append(
                Pair(
                    a,
                    b,
                    cos,
                    _intra(unit, clusters[i]),
                    _intra(unit, clusters[j]),
                    mean_a,
                    mean_b,
                    torch.nonzero(side_a).flatten().tolist(),
                    torch.nonzero(side_b).flatten().tolist(),
                    direction=torch.nn.functional.normalize(means[i], dim=0) - torch.nn.functional.normalize(means[j], dim=0),
                )
            )
    finally:
        model.train(training)
    return found


def antiphase(losses: np.ndarray, a: list[int], b: list[int]) -> float | None:
    """Correlation of the two groups' step-to-step loss differences over a window of per-example losses
    ([steps, examples]); ≈ −1 when they swing out of phase. None when either group's loss is flat."""
    da = np.diff(losses[:, a].mean(1))
    db = np.diff(losses[:, b].mean(1))
    if len(da) < 3 or da.std() == 0 or db.std() == 0:
        return None
    return float(np.corrcoef(da, db)[0, 1])
