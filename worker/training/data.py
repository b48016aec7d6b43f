"""Datasets, generated or shipped inside a package: nothing is downloaded."""

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


@dataclass
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    n_classes: int

    def to(self, device: torch.device) -> "Split":
        return Split(
            self.x_train.to(device), self.y_train.to(device), self.x_val.to(device), self.y_val.to(device), self.n_classes
        )


def digits(val_fraction: float, seed: int) -> Split:
    """scikit-learn's 8×8 digits scaled to [0, 1], with a stratified train/validation split."""
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=val_fraction, random_state=seed, stratify=y)
    return Split(torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_va), torch.from_numpy(y_va), 10)
