"""Hessian-vector products of a model's mean loss over fixed data, without touching the model.

The operator works on detached copies of the parameters and buffers: the model's weights, BatchNorm
statistics and `.grad` are never changed. Its forward runs once per batch in a chosen mode (`eval` by
default; `train` uses batch statistics and one dropout mask per batch, fixed for the whole computation, so
the operator stays symmetric). Each batch's first-order graph is kept, so that a product costs one backward
per batch, or, when the graphs would not fit a memory budget, rebuilt per product a piece at a time: in eval
mode a batch's loss is a sum over its examples, so a product may take it in pieces as small as the budget asks.
"""

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]  # (outputs, targets) -> mean loss
Mode = Literal["eval", "train"]


@contextmanager
def module_mode(model: nn.Module, mode: Mode) -> Iterator[None]:
    """Put every submodule in `mode` for the duration, then restore each one's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(mode == "train")
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


# A product's peak is about three times the tensors its forward and first backward save (measured on a
# ResNet-20 at 25 to 100 examples): the saved tensors, the gradients of the activations, and the second backward's.
PRODUCT_PEAK = 3.0


@contextmanager
def _saved_bytes(into: list[int]) -> Iterator[None]:
    """Counts the bytes of the tensors autograd saves for the backward inside the block (each one once; a view
    counts its own elements, not the storage it looks into, e.g. a slice of the whole sample)."""
    seen: set[int] = set()

    def pack(t: Tensor) -> Tensor:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            into[0] += min(t.untyped_storage().nbytes(), t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


class HessianOperator:
    """v ↦ H v for L(θ) = Σ_b (n_b / N) · loss(model(x_b; θ), y_b), at the model's current θ.

    `params` restricts θ to the named parameters (a block of the Hessian, e.g. one layer); the others stay
    fixed. Vectors are flat, in the order of `names`; products are returned in float64.

    `graphs`: `keep` every batch's first-order graph between products (each product one backward per batch;
    memory grows with the examples), `recompute` it per product (a forward and two backwards per piece), or
    `auto`: keep while the estimated graphs fit `budget` bytes. Recomputed in eval mode, a batch is taken in
    pieces whose product fits `budget` (`piece` examples; a batch at a time when it fits). In train mode the
    batch is the unit: its statistics and dropout mask define the operator.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Sequence[Batch],
        *,
        mode: Mode = "eval",
        params: Sequence[str] | None = None,
        seed: int = 0,
        graphs: str = "keep",
        budget: float = float("inf"),
    ) -> None:
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.names = list(params) if params is not None else list(named)
        unknown = set(self.names) - set(named)
        if unknown:
            raise ValueError(f"no trainable parameters named {sorted(unknown)}")
        self.model, self.loss_fn, self.batches, self.seed = model, loss_fn, list(batches), seed
        self.params = [named[n].detach().clone().requires_grad_(True) for n in self.names]
        self.fixed = {n: p.detach() for n, p in named.items() if n not in set(self.names)}
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.n = sum(self.sizes)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.mode = mode
        self.hvps = 0
        self.examples = sum(len(y) for _, y in self.batches)
        shared, per_example = self._saved_per_example()
        self.graph_bytes = 2 * (shared + per_example * self.examples)  # estimated, every batch's
        self.graphs = graphs if graphs != "auto" else ("keep" if self.graph_bytes <= budget else "recompute")
        largest = max(len(y) for _, y in self.batches)
        self.piece = largest
        if self.graphs == "recompute" and mode == "eval" and per_example > 0 and math.isfinite(budget):
            self.piece = int(min(largest, max(1, (budget / PRODUCT_PEAK - shared) // per_example)))
        self.pieces = [(x[i : i + self.piece], y[i : i + self.piece]) for x, y in self.batches for i in range(0, len(y), self.piece)]
        # One forward per piece with fixed randomness: train-mode dropout masks are the same in every product.
        kept = self.graphs == "keep"
        self._graphs: list[tuple[float, list[Tensor], float]] = []
        self._loss = 0.0
        self._gradient = [torch.zeros_like(p) for p in self.params]
        for i, (x, y) in enumerate(self.pieces):
            weight, grads, loss = self._graph(i, x, y, create_graph=kept)
            self._loss += weight * loss
            for total, g in zip(self._gradient, grads, strict=True):
                total.add_(weight * g.detach())
            if kept:
                self._graphs.append((weight, grads, loss))

    def _saved_per_example(self) -> tuple[float, float]:
        """The bytes a batch's forward and first backward save, as shared + per example × examples, from two
        slices of the first batch (so that estimating never takes a whole batch's graph)."""
        x, y = self.batches[0]
        sizes = sorted({min(len(y), 8), min(len(y), 16)})
        counted = []
        for size in sizes:
            into = [0]
            with _saved_bytes(into):
                self._graph(0, x[:size], y[:size], create_graph=True)
            counted.append(into[0])
        if len(sizes) == 1:
            return 0.0, counted[0] / sizes[0]
        per_example = max(0.0, (counted[1] - counted[0]) / (sizes[1] - sizes[0]))
        return max(0.0, counted[0] - per_example * sizes[0]), per_example

    def _graph(self, i: int, x: Tensor, y: Tensor, create_graph: bool) -> tuple[float, list[Tensor], float]:
        """Batch i's weight, gradient (with its graph when create_graph) and loss."""
        devices = [self.device] if self.device.type == "cuda" else []
        buffers = {n: b.detach().clone() for n, b in self.model.named_buffers()}
        with module_mode(self.model, self.mode), torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed + i)
            out = functional_call(self.model, {**self.fixed, **dict(zip(self.names, self.params, strict=True)), **buffers}, (x,))
        loss = self.loss_fn(out, y)
        grads = torch.autograd.grad(loss, self.params, create_graph=create_graph)
        return len(y) / self.examples, list(grads), float(loss.detach())

    @property
    def loss(self) -> float:
        return self._loss

    def describe(self) -> str:
        """How the products are taken, as a result states it."""
        size = f"{self.graph_bytes / 2**20:,.0f} MiB"
        if self.graphs == "keep":
            return f"graphs kept ({len(self.batches)} batch{'es' if len(self.batches) > 1 else ''}, about {size})"
        unit = f"{self.piece} example{'s' if self.piece > 1 else ''}" if len(self.pieces) > len(self.batches) else "a batch"
        return f"graphs recomputed per product, {unit} at a time (keeping all would take about {size})"

    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def split(self, v: Tensor) -> list[Tensor]:
        return [chunk.view(shape) for chunk, shape in zip(torch.split(v, self.sizes), self.shapes, strict=True)]

    def gradient(self) -> Tensor:
        return self.flatten(self._gradient).double()

    def parameters(self) -> Tensor:
        """θ as a flat float64 vector."""
        return self.flatten([p.detach() for p in self.params]).double()

    def matvec(self, v: Tensor) -> Tensor:
        pieces = self.split(v.to(self.dtype))
        total: list[Tensor] | None = None
        kept = self.graphs == "keep"
        for i, (x, y) in enumerate(self.pieces):
            weight, grads, _ = self._graphs[i] if kept else self._graph(i, x, y, create_graph=True)
            dot = sum((g * p).sum() for g, p in zip(grads, pieces, strict=True))
            hv = torch.autograd.grad(dot, self.params, retain_graph=kept)
            total = [weight * h for h in hv] if total is None else [t + weight * h for t, h in zip(total, hv, strict=True)]
        self.hvps += 1
        assert total is not None
        return self.flatten(total).double()

    __call__ = matvec


def layer_blocks(model: nn.Module) -> dict[str, list[str]]:
    """Trainable parameter names grouped by the module that owns them ('0.weight', '0.bias' → '0')."""
    blocks: dict[str, list[str]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            blocks.setdefault(name.rpartition(".")[0] or name, []).append(name)
    return blocks


class GaussNewtonOperator:
    """v ↦ G v, the Gauss–Newton part of the Hessian: G = Σ_b (n_b/N) J_bᵀ (∂²loss/∂out²) J_b.

    H = G + (the part from the curvature of the network itself); for cross-entropy the outliers of the
    spectrum live mostly in G (Papyan 2019; Sagun et al. 2017), which vᵀGv / vᵀHv measures per eigenvector.
    Each product is a forward-mode J v, the loss's curvature in the outputs, and a backward Jᵀ u; nothing
    of the model is changed.
    """

    def __init__(self, op: HessianOperator, model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], seed: int = 0):
        self.op, self.model, self.loss_fn, self.batches, self.seed = op, model, loss_fn, list(batches), seed
        named = dict(model.named_parameters())
        self.fixed = {n: p.detach() for n, p in named.items() if n not in set(op.names)}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.products = 0

    def _forward(self, params: dict[str, Tensor], x: Tensor, i: int) -> Tensor:
        devices = [self.op.device] if self.op.device.type == "cuda" else []
        with module_mode(self.model, self.op.mode), torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed + i)  # the same dropout masks as the Hessian operator's forward
            return functional_call(self.model, {**self.fixed, **params, **dict(self.buffers)}, (x,))

    def matvec(self, v: Tensor) -> Tensor:
        params = {n: p.detach() for n, p in zip(self.op.names, self.op.params, strict=True)}
        tangent = dict(zip(self.op.names, self.op.split(v.to(self.op.dtype)), strict=True))
        total = torch.zeros(self.op.n, dtype=torch.float64, device=self.op.device)
        for i, (x, y) in enumerate(self.batches):
            forward = functools.partial(self._forward, x=x, i=i)
            out, jv = torch.func.jvp(forward, (params,), (tangent,))
            z = out.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.loss_fn(z, y), z, create_graph=True)
            (hjv,) = torch.autograd.grad(g, z, grad_outputs=jv)
            _, pullback = torch.func.vjp(forward, params)
            weight = len(y) / self.op.examples
            total += weight * self.op.flatten([pullback(hjv)[0][n] for n in self.op.names]).double()
        self.products += 1
        return total

    __call__ = matvec
