"""The empirical neural tangent kernel Θ(x, x') = J(x) J(x')ᵀ of a network on a small sample, and how it moves
(Jacot et al. 2018; Fort et al. 2020; Chizat & Bach's lazy training). Pure PyTorch numerics.

Each output's kernel K_o[i, j] = ⟨∂f_o(x_i)/∂θ, ∂f_o(x_j)/∂θ⟩ over the sample's n examples (the blocks on the
diagonal of the full nO × nO Gram matrix; their sum over o is the kernel the probe follows) is built one of two
ways:
- rows: the Jacobian's rows, a chunk of examples at a time by vector–Jacobian products, then K_o = J_o J_oᵀ
  (memory n·O·P);
- products: without the Jacobian (large P): a chunk of its rows at a time (chunk·O·P), each pushed forward
  through the whole sample by Jacobian–vector products to give K's columns.
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vmap

ROWS_BUDGET = 256 * 2**20  # bytes of the whole Jacobian below which it is formed
CHUNK = 16  # examples per chunk of rows


def _function(model: nn.Module) -> tuple[dict[str, Tensor], Callable[[dict[str, Tensor], Tensor], Tensor]]:
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def f(theta: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, (theta, buffers), (x,)).reshape(len(x), -1)

    return params, f


def _rows(f: Callable, params: dict[str, Tensor], x: Tensor) -> dict[str, Tensor]:
    """The Jacobian's rows for these examples, (n, O, *shape) for each parameter: each example's own reverse-mode
    Jacobian, vectorized over the examples."""

    def one(example: Tensor) -> dict[str, Tensor]:
        return jacrev(lambda theta: f(theta, example[None])[0])(params)

    return vmap(one)(x)


def _jacobian(f: Callable, params: dict[str, Tensor], x: Tensor, outputs: int) -> Tensor:
    """The Jacobian as (O, n, P), a chunk of examples at a time."""
    count = sum(p.numel() for p in params.values())
    first = next(iter(params.values()))
    jacobian = torch.empty(outputs, len(x), count, dtype=first.dtype, device=first.device)
    for start in range(0, len(x), CHUNK):
        rows = _rows(f, params, x[start : start + CHUNK])
        flat = torch.cat([r.reshape(len(r), outputs, -1) for r in rows.values()], 2)
        jacobian[:, start : start + len(flat)] = flat.transpose(0, 1)
    return jacobian


def gram(model: nn.Module, x: Tensor, route: str | None = None) -> Tensor:
    """K (O, n, n): each output's kernel, of the model as it is (use eval mode), computed in the model's dtype and
    returned in float64 (`route`: rows or products; None: rows when the Jacobian fits ROWS_BUDGET)."""
    params, f = _function(model)
    with torch.no_grad():
        outputs = f(params, x[:1]).shape[1]
    n, count = len(x), sum(p.numel() for p in params.values())
    route = route or ("rows" if n * outputs * count * 4 <= ROWS_BUDGET else "products")
    chunks = [slice(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]
    if route == "rows":
        jacobian = _jacobian(f, params, x, outputs)
        return torch.bmm(jacobian, jacobian.transpose(1, 2)).double()  # (in the model's dtype: 1 − cos is second order in its error)
    columns = []
    for part in chunks:
        rows = {name: r.flatten(0, 1) for name, r in _rows(f, params, x[part]).items()}
        pushed = vmap(lambda tangent: jvp(lambda theta: f(theta, x), (params,), (tangent,))[1])(rows)  # (chunk·O, n, O)
        columns.append(pushed.reshape(-1, outputs, n, outputs).diagonal(dim1=1, dim2=3).double())  # (chunk, n, O): o' = o
    return torch.cat(columns).permute(2, 0, 1)  # (K_o is symmetric)


def summed(k: Tensor) -> Tensor:
    """The kernel summed over outputs (n, n)."""
    return k.sum(0)


def cosine(a: Tensor, b: Tensor) -> float:
    """⟨A, B⟩_F / (‖A‖‖B‖)."""
    norm = float(torch.linalg.norm(a) * torch.linalg.norm(b))
    return float((a * b).sum()) / norm if norm > 0 else math.nan


def centred(k: Tensor) -> Tensor:
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def target_alignment(k: Tensor, targets: Tensor) -> float:
    """Centred kernel–target alignment (Cortes et al. 2012): cos(HKH, H YYᵀ H), Y a row per example (one-hot
    classes, or regression targets)."""
    y = targets.reshape(len(targets), -1).double()
    return cosine(centred(k), centred(y @ y.T))


def velocity(before: Tensor, after: Tensor) -> float:
    """1 − cos(K₁, K₂): 0 when the kernel only scales, as in the lazy regime."""
    return 1.0 - cosine(before, after)
