"""The fixed Hessian case of ../shared/bench-cases/hessian: digits (X/16, permutation seed 0, first 1,500
examples), a tanh MLP 64-64-64-10 (8,970 parameters) and a CNN (143,466 parameters) at frozen weights,
with reference eigenvalues (exact dense float64 Hessian for the MLP; float64 eigsh to 1e-10 for the CNN).
"""

import json
import os
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F

SHARED = Path(os.environ.get("DYNASCOPE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
REFS = SHARED / "bench-cases" / "hessian" / "refs"
N_HESSIAN = 1500


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1)
        self.f1, self.f2 = nn.Linear(32 * 4 * 4, 256), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c2(F.relu(self.c1(x)))), 2).flatten(1)
        return self.f2(F.relu(self.f1(x)))


def available() -> bool:
    return (REFS / "mlp_seed0.json").is_file()


def load(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, dict]:
    """(model at the frozen weights, X, y, reference) for 'mlp' or 'cnn'."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm][:N_HESSIAN], y[perm][:N_HESSIAN]
    model: nn.Module = MLP() if name == "mlp" else CNN()
    if name == "cnn":
        x = x.reshape(-1, 1, 8, 8)
    model.load_state_dict(torch.load(REFS / f"{name}_seed0.pt", weights_only=True))
    reference = json.loads((REFS / f"{name}_seed0.json").read_text())
    return model, x, y, reference
