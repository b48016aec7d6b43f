"""Data a job names as `dynascope_testlab.data:<function>`: each gets the run's seed and the spec's kwargs."""

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset


def digits(seed: int, val_fraction: float = 0.2) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's digits as (train, validation) Datasets of (1×8×8 image, class) items."""
    bunch = load_digits()
    x = torch.tensor(bunch.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(bunch.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(len(y) * (1 - val_fraction))
    return TensorDataset(x[order[:cut]], y[order[:cut]]), TensorDataset(x[order[cut:]], y[order[cut:]])


def regression(seed: int, examples: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A linear regression with 3 targets as NumPy arrays (x_train, y_train, x_val, y_val)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(examples, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 3))).astype(np.float32)
    return x[:150], y[:150], x[150:], y[150:]


def mismatched(seed: int) -> tuple[np.ndarray, ...]:
    return np.zeros((10, 3)), np.zeros(9, dtype=np.int64), np.zeros((2, 3)), np.zeros(2, dtype=np.int64)
