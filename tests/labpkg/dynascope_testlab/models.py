"""Models a job names as `dynascope_testlab.models:<function>`: each gets the data's description and keyword
arguments from the spec."""

import math

import torch
from torch import nn


class RowAttention(nn.Module):
    """An image's rows as tokens: an embedding, a learned position table and a per-feature gate (parameters no
    layer owns), one written-out self-attention block, mean pooling and a linear head."""

    def __init__(self, rows: int, features: int, width: int, heads: int, outputs: int) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(features, width)
        self.position = nn.Parameter(0.02 * torch.randn(rows, width))
        self.qkv = nn.Linear(width, 3 * width)
        self.mix = nn.Linear(width, width)
        self.gate = nn.Parameter(torch.ones(width))
        self.head = nn.Linear(width, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.reshape(len(x), self.position.shape[0], -1)) + self.position
        b, t, c = tokens.shape
        q, k, v = self.qkv(tokens).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attended = ((q @ k.transpose(-2, -1)) / math.sqrt(c // self.heads)).softmax(-1) @ v
        tokens = tokens + self.gate * self.mix(attended.transpose(1, 2).reshape(b, t, c))
        return self.head(torch.tanh(tokens).mean(1))


def row_attention(description, width: int = 16, heads: int = 2) -> nn.Module:  # noqa: ANN001
    rows, features = description.input_shape[-2], description.input_shape[-1]
    return RowAttention(rows, features, width, heads, description.outputs)


def seven_outputs(description) -> nn.Module:  # noqa: ANN001
    """Whatever the data: 7 scores (does not fit 10 classes)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(description.input_shape).prod()), 7))


def not_a_module(description) -> str:  # noqa: ANN001
    return "a model"


def raises(description, message: str = "no such architecture") -> nn.Module:  # noqa: ANN001
    raise ValueError(message)
