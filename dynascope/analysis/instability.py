"""What Wortsman et al. (2023, "Small-scale proxies for large-scale Transformer training instabilities") watch:
the pre-softmax attention logits of each layer, the output's log-normalizer log Z, and per parameter group the
gradient's RMS against Adam's ε and the update's RMS.

Attention logits are read three ways: as given (a `dynascope.AttentionLogits` hook point, -inf where masked),
recomputed from an `nn.MultiheadAttention`'s inputs and weights, or from the arguments of a
`scaled_dot_product_attention` call. The statistics are sums, so the calls of one site in one step add up.
"""

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass
class AttentionStats:
    """Sums over one site's calls: |logit| over the visible entries (max and sum), attention entropy over the rows
    with at least two visible keys, and per head the sum of each such row's largest weight."""

    max_abs: Tensor
    sum_abs: Tensor
    visible: Tensor
    entropy: Tensor
    rows: Tensor
    top: Tensor  # (heads,)
    head_rows: Tensor  # (heads,)

    def __add__(self, other: "AttentionStats") -> "AttentionStats":
        a, b = (self, other) if self.top.shape == other.top.shape else (self.pooled(), other.pooled())
        return AttentionStats(
            torch.maximum(a.max_abs, b.max_abs),
            a.sum_abs + b.sum_abs,
            a.visible + b.visible,
            a.entropy + b.entropy,
            a.rows + b.rows,
            a.top + b.top,
            a.head_rows + b.head_rows,
        )

    def pooled(self) -> "AttentionStats":
        """Heads pooled into one (calls of a site that differ in their number of heads)."""
        return AttentionStats(
            self.max_abs,
            self.sum_abs,
            self.visible,
            self.entropy,
            self.rows,
            self.top.sum(0, keepdim=True),
            self.head_rows.sum(0, keepdim=True),
        )

    def summary(self, onehot: float) -> dict[str, float]:
        """max and mean |logit|, mean entropy (nats), and the share of heads whose mean largest weight exceeds `onehot`."""
        counted = self.head_rows > 0
        near = (self.top / self.head_rows.clamp_min(1) > onehot) & counted
        values = torch.stack(
            [
                self.max_abs.double(),
                self.sum_abs.double() / self.visible.clamp_min(1),
                self.entropy.double() / self.rows.clamp_min(1),
                near.sum().double() / counted.sum().clamp_min(1),
            ]
        ).tolist()
        return dict(zip(("logit_max", "logit_mean", "entropy", "onehot"), values, strict=True))


@torch.no_grad()
def attention_stats(logits: Tensor, examples: int | None = None) -> AttentionStats:
    """Statistics of pre-softmax logits (batch, heads, queries, keys), -inf where a key is masked, over the first
    `examples` of the batch (None: all); a 2- or 3-D tensor is one head. About ten passes over those logits, with
    two exponentials (it runs inside a training step): the entropy is log Σ e^s − Σ p·s."""
    s = logits.detach()
    s = s.float() if s.dtype in (torch.float16, torch.bfloat16) else s
    s = s.reshape(-1, 1, *s.shape[-2:]) if s.ndim < 4 else s.reshape(-1, *s.shape[-3:])
    s = s[:examples]
    masked = s == -math.inf
    filled = s.masked_fill(masked, 0)
    magnitude = filled.abs()
    rows = (s.shape[-1] - masked.sum(-1)) >= 2  # (a query that sees one key is one-hot by construction)
    peak = s.amax(-1, keepdim=True).clamp_min(torch.finfo(s.dtype).min)  # (a row with no visible key stays finite)
    weights = (s - peak).exp_()
    total = weights.sum(-1, keepdim=True)
    weights /= total
    entropy = (total.log_() + peak).squeeze(-1) - (weights * filled).sum(-1)
    top = weights.amax(-1).masked_fill_(~rows, 0)
    return AttentionStats(
        magnitude.amax(),
        magnitude.sum(),
        masked.numel() - masked.sum(),
        entropy.masked_fill_(~rows, 0).sum(),
        rows.sum(),
        top.sum((0, 2)),
        rows.sum((0, 2)),
    )


def sdpa_logits(
    query: Tensor,
    key: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    examples: int | None = None,
) -> Tensor:
    """The pre-softmax logits of `F.scaled_dot_product_attention(query, key, value, ...)` (its documented reference
    computation) for the first `examples` of the batch: -inf where a boolean mask is False or a causal query may not
    look; a float mask is added."""
    q, k = query.detach(), key.detach()
    if q.ndim >= 3:
        if attn_mask is not None and attn_mask.ndim == q.ndim and len(attn_mask) == len(q):
            attn_mask = attn_mask[:examples]
        q, k = q[:examples], k[:examples]
    if enable_gqa and q.ndim >= 3 and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
    s = (q @ k.transpose(-2, -1)) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    queries, keys = s.shape[-2:]
    if is_causal:
        s = s.masked_fill(~torch.ones(queries, keys, dtype=torch.bool, device=s.device).tril(), -math.inf)
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else s + attn_mask.detach()
    return s


def sdpa_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a scaled_dot_product_attention call that sdpa_logits takes, by name."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
    given = dict(zip(names, args, strict=False)) | kwargs
    return {k: given[k] for k in ("query", "key", "attn_mask", "is_causal", "scale", "enable_gqa") if k in given}


def mha_logits(
    module: nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    key_padding_mask: Tensor | None = None,
    attn_mask: Tensor | None = None,
    examples: int | None = None,
) -> Tensor:
    """The pre-softmax logits (batch, heads, queries, keys) of an nn.MultiheadAttention's forward on these inputs,
    for the first `examples` of the batch, from its weights (its in-projection, bias_k and zero attention
    included); -inf where a boolean mask masks."""
    if not module.batch_first and query.ndim == 3:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    query, key = query.detach(), key.detach()
    if query.ndim == 2:  # unbatched
        query, key = query[None], key[None]
    e, h = module.embed_dim, module.num_heads
    query, key = query[:examples], key[:examples]
    if key_padding_mask is not None and key_padding_mask.ndim == 2:
        key_padding_mask = key_padding_mask[:examples]
    if attn_mask is not None and attn_mask.ndim == 3 and examples is not None:
        attn_mask = attn_mask[: examples * h]
    bias = module.in_proj_bias.detach() if module.in_proj_bias is not None else None
    if module._qkv_same_embed_dim:
        w_q, w_k = module.in_proj_weight.detach()[:e], module.in_proj_weight.detach()[e : 2 * e]
    else:
        w_q, w_k = module.q_proj_weight.detach(), module.k_proj_weight.detach()
    q = F.linear(query, w_q, bias[:e] if bias is not None else None)
    k = F.linear(key, w_k, bias[e : 2 * e] if bias is not None else None)
    extra = 0
    if module.bias_k is not None:
        k, extra = torch.cat([k, module.bias_k.detach().expand(len(k), 1, e)], 1), extra + 1
    if module.add_zero_attn:
        k, extra = torch.cat([k, k.new_zeros(len(k), 1, e)], 1), extra + 1
    n, queries, keys, d = len(q), q.shape[1], k.shape[1], e // h
    s = q.view(n, queries, h, d).transpose(1, 2) @ k.view(n, keys, h, d).permute(0, 2, 3, 1) / math.sqrt(d)
    if attn_mask is not None:
        mask = (
            F.pad(attn_mask.detach(), (0, extra)).reshape(-1, *s.shape[-3:])
            if attn_mask.ndim == 3
            else F.pad(attn_mask.detach(), (0, extra))
        )
        s = s.masked_fill(mask, -math.inf) if mask.dtype == torch.bool else s + mask
    if key_padding_mask is not None:
        padding = F.pad(key_padding_mask.detach(), (0, extra))[:, None, None, :]
        s = s.masked_fill(padding, -math.inf) if padding.dtype == torch.bool else s + padding
    return s


@torch.no_grad()
def log_normalizer(outputs: Tensor) -> dict[str, float]:
    """log Z = logsumexp of each prediction's output logits: mean and max |log Z|, and the z-loss mean(log² Z)
    (before its weight)."""
    out = outputs.detach()
    log_z = torch.logsumexp(out.float() if out.dtype in (torch.float16, torch.bfloat16) else out, -1).flatten().double()
    values = torch.stack([log_z.abs().mean(), log_z.abs().amax(), log_z.pow(2).mean()]).tolist()
    return dict(zip(("logz_mean_abs", "logz_max_abs", "z_loss"), values, strict=True))


def rms(sum_of_squares: float, count: int) -> float:
    return math.sqrt(sum_of_squares / count) if count else math.nan


def second_moment_below(state: dict[str, Any], group: dict[str, Any]) -> Tensor | None:
    """How many coordinates of a parameter (its optimizer `state`, in param `group`) have a bias-corrected
    second-moment root √v̂ below the optimizer's ε, where the update of a coordinate shrinks with its gradient
    (Wortsman et al. §3.4): v < ε²(1 − β₂ᵗ), one comparison. None before Adam's first step, or for an optimizer
    without a second moment."""
    if "exp_avg_sq" not in state or "eps" not in group:
        return None
    return (state["exp_avg_sq"] < group["eps"] ** 2 * (1 - group["betas"][1] ** float(state["step"]))).sum()
