"""The empirical neural tangent kernel Θ(x, x') = J(x) J(x')ᵀ of a network on a small sample, and how it moves
(Jacot et al. 2018; Fort et al. 2020; Chizat & Bach's lazy training). Pure PyTorch numerics.

The Gram tensor K[i, o, j, o'] = ⟨∂f_o(x_i)/∂θ, ∂f_o'(x_j)/∂θ⟩ over the sample's n examples and the network's O
outputs is built one of two ways:
- rows: the Jacobian's rows, a chunk of examples at a time by vector–Jacobian products, then K = J Jᵀ (memory
  n·O·P);
- products: without the Jacobian (large P): a chunk of its rows at a time (chunk·O·P), each pushed forward
  through the whole sample by Jacobian–vector products to give K's columns.
"""

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp, vmap

ROWS_BUDGET = 256 * 2**20  # bytes of the whole Jacobian below which it is formed
CHUNK = 16  # examples per chunk of rows


def _function(model: nn.Module) -> tuple[dict[str, Tensor], Callable[[dict[str, Tensor], Tensor], Tensor]]:
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def f(theta: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, (theta, buffers), (x,)).reshape(len(x), -1)

    return params, f


def _rows(f: Callable, params: dict[str, Tensor], x: Tensor) -> dict[str, Tensor]:
    """The Jacobian's rows for these examples, one per (example, output), as tensors shaped like the parameters."""
    out, pull = vjp(lambda theta: f(theta, x), params)
    basis = torch.eye(out.numel(), dtype=out.dtype, device=out.device).reshape(out.numel(), *out.shape)
    (rows,) = vmap(pull)(basis)
    return rows


def _flat(rows: dict[str, Tensor]) -> Tensor:
    return torch.cat([r.reshape(len(r), -1) for r in rows.values()], 1)


def gram(model: nn.Module, x: Tensor, route: str | None = None) -> Tensor:
    """K (n, O, n, O) of the model as it is (use eval mode), in float64 (`route`: rows or products; None: rows
    when the Jacobian fits ROWS_BUDGET)."""
    params, f = _function(model)
    with torch.no_grad():
        outputs = f(params, x[:1]).shape[1]
    n, count = len(x), sum(p.numel() for p in params.values())
    route = route or ("rows" if n * outputs * count * 4 <= ROWS_BUDGET else "products")
    chunks = [slice(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]
    if route == "rows":
        jacobian = torch.cat([_flat(_rows(f, params, x[part])) for part in chunks]).double()
        return (jacobian @ jacobian.T).reshape(n, outputs, n, outputs)
    columns = []
    for part in chunks:
        rows = _rows(f, params, x[part])
        pushed = vmap(lambda tangent: jvp(lambda theta: f(theta, x), (params,), (tangent,))[1])(rows)  # (chunk·O, n, O)
        columns.append(pushed.double())
    return torch.cat(columns).reshape(n, outputs, n, outputs).permute(2, 3, 0, 1)


def summed(k: Tensor) -> Tensor:
    """The kernel summed over outputs (n, n): Σ_o K[i, o, j, o]."""
    return k.diagonal(dim1=1, dim2=3).sum(-1)


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
