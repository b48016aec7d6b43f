"""Hook points: modules that return their input unchanged and mark a tensor that a probe reads exactly."""

from torch import nn


class AttentionLogits(nn.Identity):
    """A model's pre-softmax attention logits (…, heads, queries, keys; -inf where a key is masked), for the
    instability probe: write `scores = self.logits(scores)` just before the softmax. (Without it the probe reads
    `nn.MultiheadAttention` and `F.scaled_dot_product_attention`, recomputing their logits.)"""
