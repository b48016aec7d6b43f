"""Neural collapse (Papyan, Han & Donoho 2020): how far the last-layer features of a classifier have collapsed
onto a simplex equiangular tight frame, and the classifier onto them. In float64, on features H (N × d) with
labels y, the class means μ_c, their global mean μ_G and the centred means M = [μ_c − μ_G] (C × d):

- NC1 = tr(Σ_W Σ_B⁺) / C, with Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ and Σ_B = MᵀM / C: the
  within-class spread against the between-class one (0 when every feature sits on its class mean);
- NC2: the centred means' norms are equal (their coefficient of variation, `equinorm`) and their pairwise
  cosines are −1/(C−1) (the mean |cos + 1/(C−1)|, `equiangle`): both 0 for a simplex ETF;
- NC3 = ‖W/‖W‖ − M/‖M‖‖²_F, the classifier W (C × d) against the centred means (0 when W ∝ M);
- NC4: the share of examples where the nearest class mean and the network's prediction disagree.

Σ_B⁺ is never formed: with M = U S Vᵀ (rank r), tr(Σ_W Σ_B⁺) = C Σ_k v_kᵀ Σ_W v_k / s_k², and v_kᵀ Σ_W v_k is a
mean of squared projections of the centred features, so memory stays O(N·d).
"""

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ClassMeans:
    means: Tensor  # C × d, float64
    present: Tensor  # C booleans: the class has examples in the sample

    @property
    def centred(self) -> Tensor:
        kept = self.means[self.present]
        return kept - kept.mean(0)


def class_means(features: Tensor, labels: Tensor, classes: int) -> ClassMeans:
    h = features.double()
    sums = torch.zeros(classes, h.shape[1], dtype=torch.float64, device=h.device).index_add_(0, labels, h)
    counts = torch.bincount(labels, minlength=classes).to(h)
    return ClassMeans(sums / counts.clamp_min(1).unsqueeze(1), counts > 0)


def nc1(features: Tensor, labels: Tensor, means: ClassMeans) -> float:
    """tr(Σ_W Σ_B⁺)/C, on the classes present (Σ_B's pseudo-inverse drops directions below machine precision)."""
    within = features.double() - means.means[labels]
    m = means.centred
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    keep = s > s.max() * max(m.shape) * torch.finfo(torch.float64).eps
    if not keep.any():
        return float("inf")
    projected = within @ vh[keep].T  # N × r
    classes = len(m)
    per_direction = (projected**2).mean(0) / (s[keep] ** 2 / classes)
    return float(per_direction.sum() / classes)


def nc2(means: ClassMeans) -> tuple[float, float]:
    """(equinorm, equiangle): the centred means' norms' coefficient of variation, and their mean |cos + 1/(C−1)|."""
    m = means.centred
    norms = m.norm(dim=1)
    classes = len(m)
    unit = m / norms.clamp_min(torch.finfo(torch.float64).tiny).unsqueeze(1)
    cos = unit @ unit.T
    off = cos[~torch.eye(classes, dtype=torch.bool, device=m.device)]
    return float(norms.std(correction=0) / norms.mean()), float((off + 1 / (classes - 1)).abs().mean())


def nc3(weight: Tensor, means: ClassMeans) -> float:
    w = weight.detach().double()[means.present]  # (as it is: W is not centred)
    m = means.centred
    return float(((w / w.norm() - m / m.norm()) ** 2).sum())


def nc4(features: Tensor, predictions: Tensor, means: ClassMeans) -> float:
    """The share of examples where argmin_c ‖h − μ_c‖ (over the classes present) ≠ the network's prediction."""
    centres = means.means[means.present]
    nearest = torch.cdist(features.double(), centres).argmin(1)
    classes = means.present.nonzero().squeeze(1)
    return float((classes[nearest] != predictions).double().mean())


def mean_cosines(means: ClassMeans) -> Tensor:
    """The C × C cosines of the centred class means (−1/(C−1) off the diagonal at collapse)."""
    m = means.centred
    unit = m / m.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny).unsqueeze(1)
    return unit @ unit.T
