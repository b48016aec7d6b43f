"""`mylab.models:build_vit`: a small vision transformer. Dynascope calls it with a description of the data
(input shape, outputs, classes, modality) and the spec's kwargs."""

import math

import torch
from torch import nn


class Block(nn.Module):
    """Pre-norm self-attention (written out, so that Hessian-vector products can differentiate it twice) and an MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attention = ((q @ k.transpose(-2, -1)) / math.sqrt(c // self.heads)).softmax(-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, channels: int, size: int, patch: int, width: int, depth: int, heads: int, outputs: int) -> None:
        super().__init__()
        self.patches = nn.Conv2d(channels, width, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.position = nn.Parameter(0.02 * torch.randn(1, (size // patch) ** 2 + 1, width))
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1) + self.position
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def build_vit(description, depth: int = 2, width: int = 32, heads: int = 4, patch: int = 4) -> nn.Module:  # noqa: ANN001
    channels, height, width_px = description.input_shape
    if height != width_px or height % patch:
        raise ValueError(f"build_vit needs square images whose side is a multiple of patch={patch}, not {height}×{width_px}")
    return ViT(channels, height, patch, width, depth, heads, description.outputs)
