"""The fixed samples of the training set probes compute on: the same rows at every step of a run."""

import torch
from torch import Tensor

from dynascope.probes.base import Run


def stratified_sample(y: Tensor, size: int, seed: int) -> Tensor:
    """Indices of a fixed sample of `size` rows keeping each class's share (largest remainders); plain random
    rows for regression targets. The same seed gives the same rows at every step."""
    n = len(y)
    gen = torch.Generator().manual_seed(seed)
    if size >= n:
        return torch.arange(n)
    if y.is_floating_point() or y.dim() > 1:
        return torch.randperm(n, generator=gen)[:size].sort().values
    labels = y.cpu()
    classes, counts = labels.unique(return_counts=True)
    exact = counts.double() * size / n
    take = exact.floor().long()
    short = size - int(take.sum())
    take[torch.argsort(exact - take, descending=True)[:short]] += 1
    picked = []
    for c, k in zip(classes.tolist(), take.tolist()):
        rows = (labels == c).nonzero().squeeze(1)
        picked.append(rows[torch.randperm(len(rows), generator=gen)[:k]])
    return torch.cat(picked).sort().values


def random_rows(run: Run, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """`size` random rows of the training set (all of it when smaller), the same ones each time."""
    n = len(run.y_train)
    if size >= n:
        return run.x_train, run.y_train
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].to(run.x_train.device)
    return run.x_train[idx], run.y_train[idx]


def stratified_rows(run: Run, size: int, seed: int) -> tuple[Tensor, Tensor]:
    rows = stratified_sample(run.y_train, size, seed).to(run.x_train.device)
    return run.x_train[rows], run.y_train[rows]
