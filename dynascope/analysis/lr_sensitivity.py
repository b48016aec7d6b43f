"""Learning-rate sensitivity (Wortsman et al. 2023, §2.2): how far a setting's final loss strays from its best
over a range of learning rates. Plain Python (no torch): the API computes it across a sweep's runs."""

import math
from dataclasses import dataclass


@dataclass
class Sensitivity:
    """One curve of final loss against learning rate, and its LR sensitivity (Wortsman et al. 2023, §2.2)."""

    lrs: list[float]
    capped: list[float]  # per learning rate, the mean over its runs of min(ℓ, ℓ₀) (a diverged run counts as ℓ₀)
    initial: float  # ℓ₀, the loss at initialization (the mean over the runs)
    best: float  # min over the learning rates of `capped`
    sensitivity: float  # E_η[min(ℓ(η), ℓ₀) − min_η ℓ(η)], uniform over the learning rates given


def lr_sensitivity(runs: list[tuple[float, float, float]]) -> Sensitivity:
    """From each run's (learning rate, final loss — inf or NaN when it diverged —, loss at initialization): the
    expected deviation from the best loss over the learning rates, each run's loss capped at its ℓ₀."""
    by_lr: dict[float, list[float]] = {}
    for lr, final, initial in runs:
        by_lr.setdefault(lr, []).append(initial if not math.isfinite(final) else min(final, initial))
    lrs = sorted(by_lr)
    capped = [sum(by_lr[lr]) / len(by_lr[lr]) for lr in lrs]
    best = min(capped)
    initial = sum(r[2] for r in runs) / len(runs)
    return Sensitivity(lrs, capped, initial, best, sum(c - best for c in capped) / len(capped))
