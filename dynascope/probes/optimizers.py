"""What the probes need to know of a torch optimizer: the sharpness at which its update stops being stable, and
Adam's preconditioner (read from its own state and hyperparameters, so any loop's optimizer will do)."""

import math

import torch
from torch import Tensor


def _adaptive(optimizer: torch.optim.Optimizer) -> bool:
    return "betas" in optimizer.param_groups[0]


def stability_threshold(optimizer: torch.optim.Optimizer) -> tuple[float, str]:
    """The edge of stability at the current lr, and the rule used.

    SGD with heavy-ball momentum β: 2(1+β)/lr. Adam: (2+2β1)/((1−β1)·lr) for the preconditioned sharpness
    λmax(P⁻¹H) (Cohen et al. 2022, "Adaptive gradient methods at the edge of stability"). At lr 0 (the end of
    a schedule that decays to 0) no sharpness is unstable: the threshold is infinite.
    """
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    if not _adaptive(optimizer):
        momentum = group.get("momentum", 0.0)
        return 2 * (1 + momentum) / lr if lr else math.inf, "2(1+momentum)/lr" if momentum else "2/lr"
    b1 = group["betas"][0]
    return (2 + 2 * b1) / ((1 - b1) * lr) if lr else math.inf, "(2+2β1)/((1−β1)·lr) on λmax(P⁻¹H)"


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: list[Tensor]) -> Tensor | None:
    """Adam's diagonal P = (1−β1^t)·(√v̂_t + ε) as one flat vector, or None before the first step / for SGD."""
    if not _adaptive(optimizer):
        return None
    group = optimizer.param_groups[0]
    (b1, b2), eps = group["betas"], group["eps"]
    pieces = []
    for p in params:
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state:
            return None
        t = float(state["step"])
        v_hat = state["exp_avg_sq"] / (1 - b2**t)
        pieces.append(((1 - b1**t) * (v_hat.sqrt() + eps)).reshape(-1))
    return torch.cat(pieces).double()
