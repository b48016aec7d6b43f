"""Linear CKA (Kornblith et al. 2019): how alike two representations of the same examples are, up to an orthogonal
transform and an isotropic scaling of either. Pure PyTorch numerics.

Everything goes through a representation's Gram matrix K = X Xᵀ over its examples (examples × examples, whatever
the width), so a layer is kept between probes as Grams, never as features.

- full: the standard (biased) estimator on the whole sample, CKA = HSIC(K, L) / √(HSIC(K, K)·HSIC(L, L)) with
  HSIC(K, L) = ⟨HKH, HLH⟩ (H centres; its 1/(n−1)² cancels in the ratio);
- minibatch (Nguyen, Raghu & Kornblith 2021): the unbiased HSIC₁ (Song et al. 2012) of each batch of m examples,
  each of the three averaged over the batches before the ratio — m² memory a batch, no bias from m.
"""

import math

from torch import Tensor


def gram(x: Tensor) -> Tensor:
    """K = X Xᵀ of one representation (a row per example, flattened), in float64."""
    flat = x.reshape(len(x), -1).double()
    return flat @ flat.T


def centred(k: Tensor) -> Tensor:
    """H K H: the Gram of the representation with its mean example taken away."""
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def batches(n: int, size: int | None) -> list[slice]:
    """The whole sample (size None), or consecutive batches of `size` (a short remainder below 4 joins the last)."""
    if size is None or size >= n:
        return [slice(0, n)]
    starts = list(range(0, n, size))
    if n - starts[-1] < 4 and len(starts) > 1:
        starts.pop()
    return [slice(s, e) for s, e in zip(starts, [*starts[1:], n], strict=True)]


def grams(x: Tensor, parts: list[slice]) -> list[Tensor]:
    """A representation as `cka` reads it: over the whole sample its centred Gram (the full estimator); over
    batches each batch's Gram with its diagonal zeroed (the unbiased HSIC's). Prepared once, compared many times."""
    if len(parts) == 1:
        return [centred(gram(x[parts[0]]))]
    return [gram(x[part]).fill_diagonal_(0) for part in parts]


def hsic_unbiased(k: Tensor, l: Tensor) -> float:  # noqa: E741 (the papers' name)
    """Song et al.'s unbiased HSIC₁ of two Grams with zero diagonals (n ≥ 4)."""
    n = len(k)
    term = (k * l).sum() + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2 * (k.sum(0) @ l.sum(0)) / (n - 2)
    return float(term) / (n * (n - 3))


def _hsic(a: list[Tensor], b: list[Tensor]) -> float:
    """HSIC of two prepared representations: ⟨HKH, HLH⟩ (full), or the batches' mean unbiased HSIC₁."""
    if len(a) == 1:
        return float((a[0] * b[0]).sum())
    return sum(map(hsic_unbiased, a, b)) / len(a)


def _ratio(cross: float, own_a: float, own_b: float) -> float:
    return cross / math.sqrt(own_a * own_b) if own_a * own_b > 0 else math.nan


def cka(a: list[Tensor], b: list[Tensor]) -> float:
    """CKA of two representations prepared by `grams` over the same batches of examples: one batch is the full
    estimator, several the minibatch one. NaN when either representation does not vary."""
    return _ratio(_hsic(a, b), _hsic(a, a), _hsic(b, b))


def between(a: dict[str, list[Tensor]], b: dict[str, list[Tensor]]) -> list[list[float]]:
    """CKA of every representation of `a` (rows) with every one of `b` (columns), over the same examples."""
    own_a = [_hsic(r, r) for r in a.values()]
    own_b = [_hsic(r, r) for r in b.values()]
    return [
        [_ratio(_hsic(ra, rb), oa, ob) for rb, ob in zip(b.values(), own_b, strict=True)] for ra, oa in zip(a.values(), own_a, strict=True)
    ]


def matrix(representations: dict[str, list[Tensor]]) -> list[list[float]]:
    """CKA between every pair of the representations (symmetric, ones on the diagonal of varying ones); each
    one's own HSIC computed once."""
    names = list(representations)
    own = [_hsic(representations[n], representations[n]) for n in names]
    out = [[math.nan] * len(names) for _ in names]
    for i, a in enumerate(names):
        for j in range(i, len(names)):
            out[i][j] = out[j][i] = _ratio(_hsic(representations[a], representations[names[j]]), own[i], own[j])
    return out
