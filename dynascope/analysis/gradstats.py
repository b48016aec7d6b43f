"""Gradient statistics of a batch from one ordinary backward pass. Pure PyTorch numerics.

Notation: ℓ_i is example i's loss, L = mean_i ℓ_i over a batch of B, g_i = ∇ℓ_i, ḡ = ∇L = mean_i g_i.
Everything here follows from three per-parameter quantities (`Moments`): ‖g_i‖², g_i·ḡ and Σ_i g_i²
(per coordinate). Hooks on the layers give them without materializing the B×P per-example gradients where
the algebra allows:

- Linear on one vector per example: g_i = δ_i a_iᵀ, so ‖g_i‖² = ‖δ_i‖²‖a_i‖², Σ_i g_i² = (δ∘δ)ᵀ(a∘a) and
  g_i·ḡ = δ_iᵀ Ḡ a_i (δ: the output gradient of ℓ_i, a: the layer's input);
- Linear on sequences and convolutions (unfolded): per-example gradients of that layer only, in chunks; a layer
  that is a Linear with its weight stored transposed (Hugging Face's GPT-2 `Conv1D`) is one once registered
  (`register_transposed_linear`);
- LayerNorm, GroupNorm and BatchNorm affine parameters: g_i = Σ δ_i∘x̂_i (x̂ the normalized input) and Σ δ_i;
- anything else (embeddings, custom parameters, and a parameter two modules share, such as tied input and output
  embeddings, whose per-example gradient no one layer holds): per-example gradients by torch.func, for those
  parameters only — counted exactly, never dropped.

Under torch.distributed (DDP) each rank holds its examples' part and `.grad` already holds the global mean:
`across_ranks` joins the parts, so the statistics are those of the global batch.

With BatchNorm in train mode an example's "gradient" is its share of the batch gradient (examples interact
through the batch statistics); the statistics then describe those shares.
"""

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

LossFn = Callable[[Tensor, Tensor], Tensor]
CHUNK_ELEMENTS = 2**24  # per-example gradients of one layer are formed this many elements at a time
NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
_TRANSPOSED_LINEAR: list[type[nn.Module]] = []  # y = x W + b with W [in, out] (see register_transposed_linear)


def register_transposed_linear(kind: type[nn.Module]) -> None:
    """Give the linear rule to a layer class computing `x @ weight + bias` with `weight` of shape [in, out] (Hugging
    Face's `Conv1D` in GPT-2): without it such a layer's per-example gradients come from torch.func."""
    if kind not in _TRANSPOSED_LINEAR:
        _TRANSPOSED_LINEAR.append(kind)


@dataclass
class Moments:
    """One parameter's part of the per-example gradients of a batch."""

    mean: Tensor  # ḡ (shape of the parameter)
    sq_norms: Tensor  # [B] ‖g_i‖²
    dots: Tensor  # [B] g_i·ḡ
    coord_sq: Tensor  # Σ_i g_i² (shape of the parameter)
    rule: str  # how it was obtained: "linear", "per-example", "norm", "torch.func"


class Tape:
    """Inputs and output gradients of the layers with a fast rule, captured during one forward and backward
    (`with Tape(model) as tape: loss_fn(model(x), y).backward()`), for `moments`."""

    FAST = (nn.Linear, nn.Conv1d, nn.Conv2d, *NORMS)

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.saved: dict[nn.Module, list[Tensor]] = {}
        self.output_grad: Tensor | None = None  # the gradient at the model's output (model_output of it)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._scratch: dict[str, Tensor] = {}

    def scratch(self, key: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A buffer of `shape` kept from step to step and shared by the layers (one per `key`, grown to the
        largest asked for): per-example blocks are megabytes each, and allocating them afresh costs page
        faults that measured more than the arithmetic. Its contents are whatever was last written."""
        numel = math.prod(shape)
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._scratch[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buf[:numel].view(shape)

    def _forward_hook(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        if not output.requires_grad:
            return
        self.saved[module] = [args[0].detach()]
        output.register_hook(lambda g, m=module: self.saved[m].append(g.detach()))

    def _output_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        out = model_output(output)
        if out is not None and out.requires_grad:
            out.register_hook(self._keep_output_grad)

    def _keep_output_grad(self, grad: Tensor) -> None:
        self.output_grad = grad.detach()

    def __enter__(self) -> "Tape":
        self.saved.clear()
        self.output_grad = None
        self.names = {m: n for n, m in self.model.named_modules()}
        fast = (*self.FAST, *_TRANSPOSED_LINEAR)
        self._handles = [m.register_forward_hook(self._forward_hook) for m in self.model.modules() if isinstance(m, fast)]
        self._handles.append(self.model.register_forward_hook(self._output_hook))
        return self

    def __exit__(self, *_: object) -> None:
        for h in self._handles:
            h.remove()

    def linear_factors(self) -> Iterator[tuple[str, Tensor, Tensor]]:
        """(name, D, A) of each Linear layer: the batch gradient of its weight is DᵀA / B, rows examples × positions."""
        for module, (a, *rest) in self.saved.items():
            if isinstance(module, nn.Linear) and rest:
                name = self.names[module]
                yield name, rest[0].reshape(-1, rest[0].shape[-1]), a.reshape(-1, a.shape[-1])


def _from_per_example(pe: Tensor, mean: Tensor, rule: str, consume: bool = False) -> Moments:
    """Moments from per-example gradients pe [B, *mean.shape]; `consume`: square pe in place."""
    flat = pe.flatten(1)
    dots = flat @ mean.flatten()
    sq = flat.mul_(flat) if consume else flat * flat
    return Moments(mean, sq.sum(1), dots, sq.sum(0).view_as(mean), rule)


def _chunked_per_example(make: Callable[[slice], Tensor], batch: int, per_example: int, mean: Tensor, rule: str) -> Moments:
    """Moments from per-example gradients formed a chunk of examples at a time (`make` may hand out the same
    buffer for every chunk: each is consumed before the next is made)."""
    step = _chunk_size(batch, per_example)
    parts = [_from_per_example(make(slice(s, s + step)), mean, rule, consume=True) for s in range(0, batch, step)]
    return Moments(
        mean,
        torch.cat([p.sq_norms for p in parts]),
        torch.cat([p.dots for p in parts]),
        sum((p.coord_sq for p in parts[1:]), parts[0].coord_sq),
        rule,
    )


def _chunk_size(batch: int, per_example: int) -> int:
    return min(batch, max(1, CHUNK_ELEMENTS // max(per_example, 1)))


def _linear(w: Tensor, bias: Tensor | None, a: Tensor, d: Tensor, scale: int) -> dict[str, Moments]:
    """A Linear layer's weight gradient `w` [out, in] and bias gradient."""
    b = a.shape[0]
    out: dict[str, Moments] = {}
    if a.dim() == 2:  # one vector per example
        d = d * scale
        sq_a, sq_d = a * a, d * d
        sq_norms_d = sq_d.sum(1)
        out["weight"] = Moments(w, sq_norms_d * sq_a.sum(1), torch.linalg.vecdot(d @ w, a), sq_d.T @ sq_a, "linear")
        if bias is not None:
            out["bias"] = Moments(bias, sq_norms_d, d @ bias, sq_d.sum(0), "linear")
        return out
    a3, d3 = a.reshape(b, -1, a.shape[-1]), d.reshape(b, -1, d.shape[-1]) * scale
    out["weight"] = _chunked_per_example(lambda s: torch.einsum("bto,bti->boi", d3[s], a3[s]), b, w.numel(), w, "per-example")
    if bias is not None:
        out["bias"] = _from_per_example(d3.sum(1), bias, "linear", consume=True)
    return out


def _transposed_linear(m: nn.Module, a: Tensor, d: Tensor, scale: int) -> dict[str, Moments]:
    """The linear rule on Wᵀ, its results read back in W's layout."""
    bias = m.bias.grad if getattr(m, "bias", None) is not None else None
    out = _linear(m.weight.grad.T, bias, a, d, scale)
    w = out["weight"]
    out["weight"] = Moments(m.weight.grad, w.sq_norms, w.dots, w.coord_sq.view(w.mean.shape).T, w.rule)
    return out


def _same_padding(kernel: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """(before, after) per dimension for padding="same", split as torch's convolutions split it."""
    totals = [dk * (k - 1) for k, dk in zip(kernel, dilation, strict=True)]
    return tuple((t // 2, t - t // 2) for t in totals)


def _pad(a: Tensor, padding: tuple[tuple[int, int], ...], out: Tensor) -> Tensor:
    """F.pad's zero padding of [B, C, H, W], written into `out` (its border zeroed, its interior copied)."""
    (top, bottom), (left, right) = padding
    height, width = a.shape[2:]
    out[:, :, :top].zero_()
    out[:, :, top + height :].zero_()
    out[:, :, top : top + height, :left].zero_()
    out[:, :, top : top + height, left + width :].zero_()
    out[:, :, top : top + height, left : left + width].copy_(a)
    return out


def _patches(padded: Tensor, kernel: tuple[int, ...], dilation: tuple[int, ...], stride: tuple[int, ...], out: Tensor) -> Tensor:
    """F.unfold's [B, C·kh·kw, L] of an already padded input, written into `out` from strided views: ATen's
    CPU im2col loops over the examples and measured several times slower on small images."""
    (kh, kw), (dh, dw) = kernel, dilation
    windows = padded.unfold(2, dh * (kh - 1) + 1, stride[0]).unfold(3, dw * (kw - 1) + 1, stride[1])
    windows = windows[..., ::dh, ::dw]  # [B, C, H_out, W_out, kh, kw]
    b, c, h, w = windows.shape[:4]
    out.view(b, c, kh, kw, h, w).copy_(windows.permute(0, 1, 4, 5, 2, 3))
    return out


def _conv(m: nn.Conv1d | nn.Conv2d, a: Tensor, d: Tensor, scale: int, tape: Tape) -> dict[str, Moments]:
    b = a.shape[0]
    kernel, dilation, stride = m.kernel_size, m.dilation, m.stride
    if isinstance(m.padding, str):
        padding = _same_padding(kernel, dilation) if m.padding == "same" else tuple((0, 0) for _ in kernel)
    else:
        padding = tuple((p, p) for p in m.padding)
    if isinstance(m, nn.Conv1d):
        a, d = a.unsqueeze(-2), d.unsqueeze(-2)
        kernel, dilation, padding, stride = (1, *kernel), (1, *dilation), ((0, 0), *padding), (1, *stride)
    w = m.weight.grad
    grads = d.flatten(2)  # [B, C_out, T]
    rows, positions = w[0].numel(), grads.shape[2]  # C_in·k, T
    padded_size = [size + before + after for size, (before, after) in zip(a.shape[2:], padding, strict=True)]
    pads = any(p for side in padding for p in side)

    def make(s: slice) -> Tensor:
        n = len(range(*s.indices(b)))
        padded = _pad(a[s], padding, tape.scratch("padded", (n, a.shape[1], *padded_size), a)) if pads else a[s]
        cols = _patches(padded, kernel, dilation, stride, tape.scratch("cols", (n, rows, positions), a))
        pe = tape.scratch("per-example", (n, len(w), rows), a)
        return torch.baddbmm(pe, grads[s], cols.transpose(1, 2), beta=0, alpha=scale, out=pe).view(n, *w.shape)

    per_example = max(w.numel(), rows * positions, a.shape[1] * math.prod(padded_size))
    out = {"weight": _chunked_per_example(make, b, per_example, w, "per-example")}
    if m.bias is not None:
        out["bias"] = _from_per_example(grads.sum(2).mul_(scale), m.bias.grad, "per-example", consume=True)
    return out


def _norm(m: nn.Module, a: Tensor, d: Tensor, scale: int) -> dict[str, Moments]:
    """Affine parameters of a normalization layer, y = γ∘x̂ + β: g_i(γ) = Σ δ_i∘x̂_i, g_i(β) = Σ δ_i."""
    if isinstance(m, nn.LayerNorm):
        x_hat = F.layer_norm(a, m.normalized_shape, eps=m.eps)
        reduce = tuple(range(1, a.dim() - len(m.normalized_shape)))
    elif isinstance(m, nn.GroupNorm):
        x_hat = F.group_norm(a, m.num_groups, eps=m.eps)
        reduce = tuple(range(2, a.dim()))
    else:
        batch_stats = m.training or m.running_mean is None
        mean, var = (None, None) if batch_stats else (m.running_mean, m.running_var)
        x_hat = F.batch_norm(a, mean, var, training=batch_stats, eps=m.eps)
        reduce = tuple(range(2, a.dim()))
    out = {}
    if getattr(m, "weight", None) is not None:
        out["weight"] = _from_per_example(
            ((d * x_hat).sum(reduce) if reduce else d * x_hat).mul_(scale), m.weight.grad, "norm", consume=True
        )
    if getattr(m, "bias", None) is not None:
        out["bias"] = _from_per_example(d.sum(reduce).mul_(scale) if reduce else d * scale, m.bias.grad, "norm", consume=True)
    return out


def model_output(output: Any) -> Tensor | None:
    """The tensor of a model's output that its loss reads: the output itself, its `logits` (Hugging Face), or its
    first tensor with a batch axis."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    return next((v for v in values if isinstance(v, Tensor) and v.dim() > 0), None)


def _fallback(
    model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, names: list[str], grads: dict[str, Tensor], output_grad: Tensor | None
) -> dict[str, Moments]:
    """Per-example gradients by torch.func for the parameters no rule covers. With the step's gradient at the
    model's output, example i's is B·J_iᵀ∂L/∂out_i: a share of the loss the loop really differentiated, however it
    was scaled (a Hugging Face model divides by the tokens it counts), as the layer rules' are; without it, the
    gradient of loss_fn on the example alone. A model with dropout draws fresh masks here, from a forked random
    state: the training's own stream is untouched."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: t.detach() for n, t in model.named_buffers()}

    def output_one(wanted: dict[str, Tensor], xi: Tensor) -> Any:
        return functional_call(model, ({**params, **wanted}, buffers), (xi.unsqueeze(0),))

    if output_grad is not None and len(output_grad) == len(x):

        def share(wanted: dict[str, Tensor], xi: Tensor, gi: Tensor) -> Tensor:
            out = model_output(output_one(wanted, xi))
            assert out is not None
            return (out * gi.unsqueeze(0)).sum() * len(x)

        part, targets = share, output_grad
    else:

        def loss_one(wanted: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
            return loss_fn(output_one(wanted, xi), yi.unsqueeze(0))

        part, targets = loss_one, y
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        per_example = vmap(grad(part), in_dims=(None, 0, 0), randomness="different")({n: params[n] for n in names}, x, targets)
    return {n: _from_per_example(per_example[n], grads[n], "torch.func", consume=True) for n in names}


def moments(tape: Tape, loss_fn: LossFn, x: Tensor, y: Tensor) -> dict[str, Moments]:
    """Every trainable parameter's Moments, after a backward of the mean loss over (x, y) under `tape` (the
    gradients in `.grad` are that backward's)."""
    model, batch = tape.model, len(x)
    found: dict[str, Moments] = {}
    for module, (a, *rest) in tape.saved.items():
        if not rest:
            continue
        d = rest[0]  # the output gradient of the mean loss: ℓ_i's, times 1/B (each rule scales where it is cheapest)
        prefix = tape.names[module]
        if isinstance(module, nn.Linear):
            parts = _linear(module.weight.grad, module.bias.grad if module.bias is not None else None, a, d, batch)
        elif isinstance(module, tuple(_TRANSPOSED_LINEAR)):
            parts = _transposed_linear(module, a, d, batch)
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1 and module.padding_mode == "zeros":
            parts = _conv(module, a, d, batch, tape)
        elif isinstance(module, NORMS):
            parts = _norm(module, a, d, batch)
        else:
            parts = {}
        for k, v in parts.items():
            found[f"{prefix}.{k}" if prefix else k] = v
    for name in _shared(model):
        found.pop(name, None)
    rest_names = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is not None and n not in found]
    if rest_names:
        grads = {n: p.grad for n, p in model.named_parameters()}
        found.update(_fallback(model, loss_fn, x, y, rest_names, grads, tape.output_grad))
    return {n: found[n] for n, _ in model.named_parameters() if n in found}


def _shared(model: nn.Module) -> set[str]:
    """Names (as named_parameters gives them) of parameters that more than one module holds."""
    holders: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        holders.setdefault(id(p), []).append(name)
    return {name for names in holders.values() if len(names) > 1 for name in names}


def across_ranks(moments: dict[str, Moments], loss: float) -> tuple[dict[str, Moments], float]:
    """The Moments and mean loss of the global batch under torch.distributed, from each rank's: the per-example
    numbers gathered in rank order, Σ_i g_i² summed. (`.grad`, each Moments' mean, is already the global mean:
    DDP averaged it in the backward, which assumes equal batches on the ranks.) Every rank must call it."""
    import torch.distributed as dist

    parts = list(moments.values())
    local = torch.stack([*(m.sq_norms for m in parts), *(m.dots for m in parts)])  # [2n, B_rank]
    counts = [local.new_zeros(1) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, local.new_tensor([local.shape[1]]))
    sizes = [int(c) for c in counts]
    padded = local.new_zeros(local.shape[0], max(sizes))
    padded[:, : local.shape[1]] = local
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    joined = torch.cat([g[:, :size] for g, size in zip(gathered, sizes, strict=True)], 1)
    coord_sq = torch.cat([m.coord_sq.flatten() for m in parts])
    total_loss = local.new_tensor([loss * local.shape[1]], dtype=torch.float64)
    dist.all_reduce(coord_sq)
    dist.all_reduce(total_loss)
    n, out, offset = len(parts), {}, 0
    for i, (name, m) in enumerate(moments.items()):
        out[name] = Moments(m.mean, joined[i], joined[n + i], coord_sq[offset : offset + m.mean.numel()].view_as(m.mean), m.rule)
        offset += m.mean.numel()
    return out, float(total_loss) / sum(sizes)


def batch_moments(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> tuple[float, dict[str, Moments]]:
    """Forward and backward of the mean loss over the batch (the gradient stays in `.grad`, so the caller can
    step as usual); the loss and every trainable parameter's Moments."""
    with Tape(model) as tape:
        loss = loss_fn(model(x), y)
        loss.backward()
    return float(loss.detach()), moments(tape, loss_fn, x, y)


@dataclass
class BatchStatistics:
    """Every first-order statistic of one batch (Cockpit's definitions where Cockpit has one)."""

    batch_size: int
    loss: float
    grad_norm: float
    layer_grad_norm: dict[str, float]
    noise_scale: float  # B_simple = tr Σ / ‖G‖², per-example estimator (McCandlish et al. 2018)
    trace_sigma: float  # unbiased tr Σ
    grad_sq_unbiased: float  # unbiased ‖G‖²
    alpha: float  # ‖ḡ‖² / mean ‖g_i‖² (Chatterjee & Zielinski)
    m_coherence: float  # B·α
    norm_test: float
    inner_test: float
    ortho_test: float
    mean_gsnr: float  # mean over coordinates of ḡ_j² / (biased Var g_ij + 1e-5)
    early_stopping: float  # 1 − B·mean_j ḡ_j² / (unbiased Var g_ij + 1e-5); > 0: stop
    cabs_trace_over_loss: float  # CABS batch size = lr · this
    dead_fraction: float | None  # coordinates whose per-example gradients never vary (GSNR undefined there)
    rules: dict[str, str] = field(default_factory=dict)

    def as_metrics(self, lr: float | None = None) -> dict[str, float]:
        out = {
            "grad/norm": self.grad_norm,
            "grad/noise_scale": self.noise_scale,
            "grad/alpha": self.alpha,
            "grad/m_coherence": self.m_coherence,
            "grad/norm_test": self.norm_test,
            "grad/inner_test": self.inner_test,
            "grad/ortho_test": self.ortho_test,
            "grad/mean_gsnr": self.mean_gsnr,
            "grad/early_stopping": self.early_stopping,
            "grad/trace_sigma": self.trace_sigma,
            "grad/grad_sq_unbiased": self.grad_sq_unbiased,
        }
        if lr is not None:
            out["grad/cabs_batch_size"] = lr * self.cabs_trace_over_loss
            out["grad/temperature"] = lr / self.batch_size
        out.update({f"grad/norm/{k}": v for k, v in self.layer_grad_norm.items()})
        return out


def statistics(loss: float, moments: dict[str, Moments], eps: float = 1e-5, dead_fraction: bool = False) -> BatchStatistics:
    """Every statistic from the Moments: passes over the P coordinates on the device, then one transfer of
    the per-example and per-layer numbers, which are summed on the host in float64. Written for few
    operations: at ~10⁵ parameters each costs about as much as its arithmetic. `dead_fraction` costs three
    passes more, so it is computed only when asked for."""
    parts = list(moments.values())
    n, b = len(parts), len(parts[0].sq_norms)
    means2 = torch.cat([m.mean.flatten() for m in parts])
    means2.mul_(means2)
    scaled_var = torch.cat([m.coord_sq.flatten() for m in parts]).sub_(means2, alpha=b)  # b · biased variance
    # GSNR_j = ḡ_j² / (Var_b + eps) = b ḡ_j² / (b Var_b + b eps); EarlyStopping's unbiased variance: b − 1 for b
    shifted = scaled_var.new_empty(2, len(scaled_var))
    torch.add(scaled_var, b * eps, out=shifted[0])
    torch.add(scaled_var, (b - 1) * eps, out=shifted[1])
    gsnr_es = shifted.reciprocal_() @ means2
    summed = [*torch._foreach_norm([m.mean for m in parts]), *gsnr_es]
    if dead_fraction:
        summed.append(scaled_var.clamp_min_(0).sign_().sum())
    host = (
        torch.cat(
            [
                torch.stack([*(m.sq_norms for m in parts), *(m.dots for m in parts)]).flatten(),
                torch.stack(summed),
            ]
        )
        .cpu()
        .double()
        .numpy()
    )
    per_example, per_layer = host[: 2 * n * b].reshape(2, n, b).sum(1), host[2 * n * b :]
    sq, dots, layer = per_example[0], per_example[1], per_layer[:n]
    p = len(means2)
    g2, mean_sq, total_sq, dots2 = float((layer**2).sum()), float(sq.mean()), float(sq.sum()), float((dots**2).sum())
    gsnr, es = float(per_layer[n]) * b / p, float(per_layer[n + 1]) * (b - 1) / p
    dead = 1 - float(per_layer[n + 2]) / p if dead_fraction else None
    grad_sq = (b * g2 - mean_sq) / (b - 1)
    trace = (mean_sq - g2) / (1 - 1 / b)
    var_dots = (dots2 - b * g2**2) / (b - 1)
    var_orth = (total_sq - dots2 / g2) / (b - 1) if g2 > 0 else math.nan
    return BatchStatistics(
        batch_size=b,
        loss=loss,
        grad_norm=math.sqrt(g2),
        layer_grad_norm=dict(zip(moments, layer.tolist(), strict=True)),
        noise_scale=trace / grad_sq if grad_sq > 0 else math.inf,
        trace_sigma=trace,
        grad_sq_unbiased=grad_sq,
        alpha=g2 / mean_sq if mean_sq > 0 else math.nan,
        m_coherence=b * g2 / mean_sq if mean_sq > 0 else math.nan,
        norm_test=math.sqrt(max((total_sq - b * g2) / (b - 1), 0.0) / b / g2) if g2 > 0 else math.nan,
        inner_test=math.sqrt(max(var_dots, 0.0) / b) / g2 if g2 > 0 else math.nan,
        ortho_test=math.sqrt(max(var_orth, 0.0) / b / g2) if g2 > 0 else math.nan,
        mean_gsnr=gsnr,
        early_stopping=1 - b * es,
        cabs_trace_over_loss=(total_sq / b - g2) / loss if loss else math.nan,
        dead_fraction=dead,
        rules={n: m.rule for n, m in moments.items()},
    )


def two_batch_noise(small_sq: float, big_sq: float, b_small: int, b_big: int) -> tuple[float, float]:
    """Unbiased ‖G‖² and tr Σ from the squared norms of two mean gradients over b_small and b_big examples
    (McCandlish et al. 2018, App. A.1)."""
    grad_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1 / b_small - 1 / b_big)
    return grad_sq, trace


def batch_grad_sq(model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor) -> float:
    """‖∇L‖² of the mean loss over (x, y) — the small batch of the two-batch estimator — with no side effect:
    `.grad`, the buffers (BatchNorm running statistics) and the random state (dropout) are left as they were."""
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = {n: t.clone() for n, t in model.named_buffers()}  # BatchNorm updates these copies
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        grads = torch.autograd.grad(loss_fn(functional_call(model, buffers, (x,), strict=False), y), params)
    return float(torch.stack([g.double().pow(2).sum() for g in grads]).sum())


@dataclass
class NoiseScaleEMA:
    """B_simple over steps: EMAs of the unbiased ‖G‖² and tr Σ kept apart, divided at the end (the ratio of
    unbiased estimates is biased, and noisy per step)."""

    decay: float = 0.95
    grad_sq: float = 0.0
    trace: float = 0.0
    weight: float = 0.0

    def update(self, grad_sq: float, trace: float) -> float:
        self.grad_sq = self.decay * self.grad_sq + (1 - self.decay) * grad_sq
        self.trace = self.decay * self.trace + (1 - self.decay) * trace
        self.weight = self.decay * self.weight + (1 - self.decay)
        return self.value

    @property
    def value(self) -> float:
        return self.trace / self.grad_sq if self.grad_sq > 0 else math.inf


def lowrank_singular_values(d: Tensor, a: Tensor) -> Tensor:
    """Singular values of Dᵀ A (D: r×m output gradients, A: r×n inputs, r rows: examples × positions) from
    two thin QRs — O((m + n) r²) instead of a dense SVD of the m×n matrix."""
    _, r1 = torch.linalg.qr(d.T)  # Dᵀ = Q1 R1
    _, r2 = torch.linalg.qr(a.T)  # Aᵀ = Q2 R2, so DᵀA = Q1 (R1 R2ᵀ) Q2ᵀ
    return torch.linalg.svdvals(r1 @ r2.T)


def layer_spectra(tape: Tape) -> dict[str, dict[str, float]]:
    """Singular values of each Linear layer's batch weight gradient (Ḡ = DᵀA: rank ≤ rows), by the low-rank
    route: nuclear norm, top singular value, σ1 ratio (σ1 / Σσ), Frobenius norm."""
    out = {}
    for name, d, a in tape.linear_factors():
        if d.shape[0] >= min(d.shape[1], a.shape[1]):  # full rank possible: a dense SVD of the small side
            values = torch.linalg.svdvals(d.double().T @ a.double())
        else:
            values = lowrank_singular_values(d.double(), a.double())
        total = float(values.sum())
        out[f"{name}.weight" if name else "weight"] = {
            "nuclear": total,
            "top": float(values[0]),
            "sigma1_ratio": float(values[0]) / total if total > 0 else math.nan,
            "frobenius": float(values.pow(2).sum().sqrt()),
            "rank_bound": int(min(d.shape[0], d.shape[1], a.shape[1])),
        }
    return out


def sampled_histogram(
    model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, elements: int, seed: int, bins: int = 100
) -> dict[str, object]:
    """Histogram of per-example gradient elements of the given examples (a fixed sample), at a fixed random
    subset of `elements` coordinates — never all B·P elements. The model is evaluated in eval mode."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: t.detach() for n, t in model.named_buffers()}

    def one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return loss_fn(functional_call(model, (p, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0))

    training = model.training
    model.eval()  # one example at a time: batch statistics and dropout masks would not mean anything
    try:
        per_example = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    finally:
        model.train(training)
    flat = torch.cat([per_example[n].flatten(1) for n in params], 1)
    total = flat.shape[1]
    gen = torch.Generator().manual_seed(seed)
    picked = torch.randperm(total, generator=gen)[: min(elements, total)].to(flat.device)
    values = flat[:, picked].flatten().float()
    finite = values[torch.isfinite(values)]
    edge = float(finite.abs().max()) if finite.numel() else 1.0
    edge = edge or 1.0
    counts = torch.histc(finite, bins=bins, min=-edge, max=edge)
    return {
        "edges": torch.linspace(-edge, edge, bins + 1).tolist(),
        "counts": counts.tolist(),
        "examples": len(x),
        "elements_per_example": len(picked),
        "parameters": total,
    }


class StepHistory:
    """What successive steps say together: update-to-weight ratio per layer, cosines between successive
    gradients and between successive updates, and the distance from the initial weights. Written for few
    operations (multi-tensor ones over the parameters, one transfer per call), which is what a step of a
    small model notices."""

    def __init__(self, model: nn.Module, initial: dict[str, Tensor] | None = None) -> None:
        self.names, self.params = zip(*[(n, p) for n, p in model.named_parameters()], strict=True)
        self.values = [p.detach() for p in self.params]  # the same storage, outside autograd
        self.initial = [(initial[n] if initial else p).detach().clone() for n, p in zip(self.names, self.values, strict=True)]
        self._before = [p.clone() for p in self.values]  # refilled before every step
        self.previous_grad: tuple[Tensor, float] | None = None  # (flat gradient, its norm)
        self.previous_update: tuple[Tensor, float] | None = None

    def before_step(self) -> dict[str, float]:
        """Call after the backward, before the optimizer's step."""
        torch._foreach_copy_(self._before, self.values)
        grads = torch.cat([p.grad.flatten() for p in self.params if p.grad is not None])
        previous = self.previous_grad
        same = previous is not None and len(previous[0]) == len(grads)
        sq, dot = torch.stack([torch.dot(grads, grads), torch.dot(grads, previous[0]) if same else grads.new_zeros(())]).tolist()
        out = {}
        if same:
            out["grad/cos_previous_grad"] = dot / max(math.sqrt(sq) * previous[1], 1e-30)
        self.previous_grad = grads, math.sqrt(sq)
        return out

    @torch.no_grad()
    def after_step(self) -> dict[str, float]:
        k = len(self.names)
        steps = torch._foreach_sub(self.values, self._before)
        moved = torch._foreach_sub(self.values, self.initial)
        update = torch.cat([t.flatten() for t in steps])
        previous = self.previous_update
        dot = torch.dot(update, previous[0]) if previous is not None else update.new_zeros(())
        values = torch.stack([*torch._foreach_norm([*steps, *self._before, *moved]), dot]).tolist()
        step, before, distance = values[:k], values[k : 2 * k], values[2 * k : 3 * k]
        step_norm = math.sqrt(math.fsum(v * v for v in step))
        out = {f"grad/update_ratio/{n}": u / max(w, 1e-12) for n, u, w in zip(self.names, step, before, strict=True)}
        out |= {f"grad/distance/{n}": v for n, v in zip(self.names, distance, strict=True)}
        out["grad/update_ratio"] = step_norm / max(math.sqrt(math.fsum(v * v for v in before)), 1e-12)
        out["grad/distance"] = math.sqrt(math.fsum(v * v for v in distance))
        if previous is not None:
            out["grad/cos_previous_update"] = values[-1] / max(step_norm * previous[1], 1e-30)
        self.previous_update = update, step_norm
        return out
