"""Deep linear networks and their exact learning dynamics (Saxe, McClelland & Ganguli 2014).

A network y = W_D ⋯ W_1 x trained by gradient flow on a squared error with whitened inputs (Σxx = I) learns the
input–output correlation Σyx = U S Vᵀ mode by mode. From Saxe's decoupled initial conditions (balanced layers
whose product is a₀·Σ u_α v_αᵀ) each mode's strength a_α = u_αᵀ (W_D ⋯ W_1) v_α obeys, on its own,

    da/dt = c·D·a^(2 − 2/D)·(s − a)        (t = Σ lr over the updates; c the loss's curvature along a mode)

so that depth 1 relaxes exponentially, depth 2 follows a logistic sigmoid,
    a(t) = s / (1 + (s/a₀ − 1)·e^(−2cst)),
and a deeper network the implicit solution t(a) = ∫_{a₀}^{a} dx / (c·D·x^(2−2/D)·(s − x)), inverted here.
"""

import math
from dataclasses import dataclass

import torch
from scipy import integrate, optimize
from torch import Tensor, nn

LINEAR_PARTS = (nn.Linear, nn.Flatten, nn.Identity, nn.Sequential)


@dataclass
class Modes:
    """The singular modes of a dataset's input–output correlation, and how far its inputs are from white."""

    u: Tensor  # outputs × r, the output directions
    s: Tensor  # r singular values, largest first
    v: Tensor  # inputs × r, the input directions
    whiteness: float  # ‖Σxx − I‖_F / ‖I‖_F: 0 for whitened inputs, which the closed form assumes


def correlations(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Σyx = YᵀX/N and Σxx = XᵀX/N, in float64, of inputs flattened per example."""
    flat, targets = x.reshape(len(x), -1).double(), y.reshape(len(y), -1).double()
    return targets.T @ flat / len(x), flat.T @ flat / len(x)


def input_output_modes(x: Tensor, y: Tensor, count: int | None = None) -> Modes:
    """The top `count` (all: None) singular modes of Σyx with signal (a singular value above 1e-6·s₁: a zero
    mode's directions are arbitrary), each with the sign that makes its output direction's largest entry positive
    (so that a mode's identity does not depend on the SVD routine)."""
    syx, sxx = correlations(x, y)
    u, s, vh = torch.linalg.svd(syx, full_matrices=False)
    rank = int((s > 1e-6 * s[0]).sum()) if len(s) and s[0] > 0 else 0
    keep = rank if count is None else min(count, rank)
    u, s, v = u[:, :keep], s[:keep], vh[:keep].T
    sign = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True))).squeeze(0)
    eye = torch.eye(len(sxx), dtype=sxx.dtype, device=sxx.device)
    whiteness = float(torch.linalg.norm(sxx - eye) / math.sqrt(len(sxx)))
    return Modes(u * sign, s, v * sign, whiteness)


def balanced_layers(modes: Modes, shapes: list[tuple[int, int]], scale: float) -> list[Tensor]:
    """Saxe's decoupled initial conditions: weights (out × in, for the given layer shapes) whose every nonzero
    singular value is `scale`, chained through random orthonormal bases of the hidden layers, so that the
    product is scale^D·Σ_α u_α v_αᵀ over the first r = min(widths) modes, and W_{l+1}ᵀW_{l+1} = W_l W_lᵀ
    (balanced). Uses torch's global generator."""
    r = min(len(modes.s), *(min(shape) for shape in shapes))
    bases = [modes.v[:, :r].float()]
    for out_dim, _ in shapes[:-1]:
        q, _ = torch.linalg.qr(torch.randn(out_dim, r))
        bases.append(q)
    bases.append(modes.u[:, :r].float())
    return [scale * bases[i + 1] @ bases[i].T for i in range(len(shapes))]


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The model's weight matrices in order, if it is a product of linear maps (no nonlinearity); else an error."""
    others = [type(m).__name__ for m in model.modules() if not isinstance(m, LINEAR_PARTS)]
    if others:
        raise ValueError(f"probes.modes needs a deep linear network (linear layers only); this model has {sorted(set(others))}")
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


@torch.no_grad()
def end_to_end(model: nn.Module, input_shape: tuple[int, ...]) -> Tensor:
    """The linear part of the network's map (outputs × inputs), from its outputs on the basis vectors, in float64."""
    inputs = math.prod(input_shape)
    parameter = next(model.parameters())
    basis = torch.eye(inputs, device=parameter.device, dtype=parameter.dtype).reshape(inputs, *input_shape)
    zero = model(torch.zeros_like(basis[:1]))
    return (model(basis) - zero).reshape(inputs, -1).double().T


def strengths(product: Tensor, modes: Modes) -> Tensor:
    """a_α = u_αᵀ W v_α for each mode."""
    return ((modes.u.T @ product.to(modes.u)) * modes.v.T).sum(1)


def off_diagonal(product: Tensor, modes: Modes) -> float:
    """‖W − Σ_α a_α u_α v_αᵀ‖_F / ‖W‖_F: the share of the map outside the modes' diagonal (0 when decoupled)."""
    product = product.to(modes.u)
    diagonal = (modes.u * strengths(product, modes)) @ modes.v.T
    norm = float(torch.linalg.norm(product))
    return float(torch.linalg.norm(product - diagonal)) / norm if norm > 0 else math.nan


def curvature(loss_fn, x: Tensor, y: Tensor, modes: Modes) -> float:  # noqa: ANN001 (a LossFn)
    """c = ⟨E, ∇²L E⟩ for E = u₁v₁ᵀ and L(W) = loss_fn(X Wᵀ, Y): the loss's curvature along a mode (2/outputs for
    a mean squared error over examples and outputs, with whitened inputs). L is quadratic in W, so
    L(E) + L(−E) − 2·L(0) is it exactly."""
    flat = x.reshape(len(x), -1).double()
    direction = modes.u[:, :1] @ modes.v[:, :1].T
    targets = y.double() if y.is_floating_point() else y

    def loss(w: Tensor) -> float:
        return float(loss_fn(flat @ w.T, targets))

    return loss(direction) + loss(-direction) - 2 * loss(torch.zeros_like(direction))


def _implicit_time(a: float, s: float, a0: float, depth: int, c: float) -> float:
    """t(a) = ∫_{a₀}^{a} dx / (c·D·x^p·(s − x)), p = 2 − 2/D, as s^−p·ln(|s − a₀|/|s − a|) (its log singularity at s)
    plus a smooth rest, integrated in z = ln(x/s) where it reads s^−p·e^z·expm1(−pz)/(−expm1(z))."""
    p = 2 - 2 / depth

    def rest(z: float) -> float:
        return p if z == 0 else math.exp(z) * math.expm1(-p * z) / -math.expm1(z)

    smooth, _ = integrate.quad(rest, math.log(a0 / s), math.log(a / s), epsabs=0, epsrel=1e-12, limit=200)
    return (smooth + math.log(abs(s - a0) / abs(s - a))) / (c * depth * s**p)


def strength_at(t: float, s: float, a0: float, depth: int, c: float) -> float | None:
    """The closed-form strength of a mode of singular value s at time t (= Σ lr) from strength a₀. None where
    there is none: a deeper network from a₀ ≤ 0 (stuck at the saddle, or not decoupled)."""
    rate = c * depth
    if depth == 1:
        return s + (a0 - s) * math.exp(-c * t)
    if a0 <= 0:
        return None
    if depth == 2:
        if s == 0:
            return a0 / (1 + rate * a0 * t)
        return s / (1 + (s / a0 - 1) * math.exp(-rate * s * t))
    if t == 0 or a0 == s:
        return a0
    if s == 0:  # decay towards 0: da/dt = −cD·a^p with p = 3 − 2/D, so a^(1−p) grows linearly
        p = 3 - 2 / depth
        return (a0 ** (1 - p) + (p - 1) * rate * t) ** (1 / (1 - p))
    near_s = s * (1 - 1e-12) if a0 < s else s * (1 + 1e-12)
    if _implicit_time(near_s, s, a0, depth, c) <= t:
        return near_s
    low, high = sorted((a0, near_s))
    return optimize.brentq(lambda a: _implicit_time(a, s, a0, depth, c) - t, low, high, xtol=1e-15 * s, rtol=1e-13)


def formula(depth: int) -> str:
    """The closed form drawn, as the chart states it."""
    if depth == 1:
        return "a(t) = s + (a₀ − s)·e^(−ct)"
    if depth == 2:
        return "a(t) = s / (1 + (s/a₀ − 1)·e^(−2cst))"
    return f"t(a) = ∫ₐ₀ᵃ dx / ({depth}c·x^(2−2/{depth})·(s − x))"
