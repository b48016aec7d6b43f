"""Datasets, generated from a seed or shipped inside a package: nothing is downloaded."""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn import datasets as sk
from sklearn.model_selection import train_test_split
from torch import Tensor

from dynascope import entrypoints

from backend.spec import (
    Data,
    DigitsData,
    GaussianMixtureData,
    LinearTeacherData,
    OpposingFeaturesData,
    PythonData,
    TabularData,
    TeacherStudentData,
    TextData,
    UploadedData,
)


@dataclass
class Split:
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    n_classes: int | None  # None: regression (targets are floats)
    # What the examples are, for models and views: "tabular", "image" (C, H, W) or "text" (token ids).
    modality: str = "tabular"
    vocab: str | None = None
    # Planted structure a test can check an analysis against (ids into the training split).
    planted: dict[str, list[int]] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def outputs(self) -> int:
        """What a model outputs per example: a score per class, or the regression's targets."""
        return self.n_classes or math.prod(self.y_train.shape[1:])

    def to(self, device: torch.device) -> "Split":
        moved = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_val", "y_val")}
        return Split(**moved, n_classes=self.n_classes, modality=self.modality, vocab=self.vocab, planted=self.planted)


def _split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int, stratify: bool = True):  # type: ignore[no-untyped-def]
    return train_test_split(x, y, test_size=val_fraction, random_state=seed, stratify=y if stratify else None)


def digits(cfg: DigitsData, seed: int) -> Split:
    """8×8 digits scaled to [0, 1], as 1×8×8 images (an MLP flattens them), stratified split."""
    bunch = sk.load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x_tr, x_va, y_tr, y_va = _split(x, bunch.target.astype(np.int64), cfg.val_fraction, seed)
    return Split(*map(torch.from_numpy, (x_tr, y_tr, x_va, y_va)), n_classes=10, modality="image")


def tabular(cfg: TabularData, seed: int) -> Split:
    loader = {"iris": sk.load_iris, "wine": sk.load_wine, "breast_cancer": sk.load_breast_cancer}[cfg.kind]
    bunch = loader()
    x_tr, x_va, y_tr, y_va = _split(bunch.data.astype(np.float32), bunch.target.astype(np.int64), cfg.val_fraction, seed)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-8
    x_tr, x_va = (x_tr - mean) / std, (x_va - mean) / std
    return Split(*map(torch.from_numpy, (x_tr, y_tr, x_va, y_va)), n_classes=int(bunch.target.max()) + 1)


def gaussian_mixture(cfg: GaussianMixtureData, seed: int) -> Split:
    rng = np.random.default_rng(cfg.seed)
    centres = rng.normal(size=(cfg.classes, cfg.dim))
    centres *= cfg.separation / np.linalg.norm(centres, axis=1, keepdims=True) * np.sqrt(2) / 2
    y = rng.integers(0, cfg.classes, size=cfg.examples)
    x = (centres[y] + rng.normal(size=(cfg.examples, cfg.dim))).astype(np.float32)
    x_tr, x_va, y_tr, y_va = _split(x, y.astype(np.int64), cfg.val_fraction, seed)
    return Split(*map(torch.from_numpy, (x_tr, y_tr, x_va, y_va)), n_classes=cfg.classes)


def teacher_student(cfg: TeacherStudentData, seed: int) -> Split:
    rng = np.random.default_rng(cfg.seed)
    x = rng.normal(size=(cfg.examples, cfg.dim))
    w1 = rng.normal(size=(cfg.dim, cfg.teacher_width)) / np.sqrt(cfg.dim)
    w2 = rng.normal(size=(cfg.teacher_width, 1)) / np.sqrt(cfg.teacher_width)
    y = np.tanh(x @ w1) @ w2 + cfg.noise * rng.normal(size=(cfg.examples, 1))
    x_tr, x_va, y_tr, y_va = _split(x.astype(np.float32), y.astype(np.float32), cfg.val_fraction, seed, stratify=False)
    return Split(*map(torch.from_numpy, (x_tr, y_tr, x_va, y_va)), n_classes=None)


def _orthonormal(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(rows, columns)))
    return q * np.sign(np.diag(r))  # (the unique Q of a QR with r's diagonal positive: a uniformly random basis)


def linear_teacher(cfg: LinearTeacherData, seed: int) -> Split:
    """Inputs whitened with the training split's second moment (Σxx = XᵀX/N = I there), targets T x + noise with
    T = U diag(s) Vᵀ: with no noise, the training data's Σyx is exactly T."""
    rng = np.random.default_rng(cfg.seed)
    s = np.asarray(cfg.singular_values)
    teacher = _orthonormal(rng, cfg.outputs, len(s)) * s @ _orthonormal(rng, cfg.dim, len(s)).T
    x_tr, x_va = train_test_split(rng.normal(size=(cfg.examples, cfg.dim)), test_size=cfg.val_fraction, random_state=seed)
    values, vectors = np.linalg.eigh(x_tr.T @ x_tr / len(x_tr))
    whiten = vectors / np.sqrt(values) @ vectors.T
    x_tr, x_va = x_tr @ whiten, x_va @ whiten
    y_tr, y_va = (x @ teacher.T + cfg.noise * rng.normal(size=(len(x), cfg.outputs)) for x in (x_tr, x_va))
    arrays = (a.astype(np.float32) for a in (x_tr, y_tr, x_va, y_va))
    return Split(*map(torch.from_numpy, arrays), n_classes=None)


def opposing_features(cfg: OpposingFeaturesData, seed: int) -> Split:
    """Each class has a weak random 8×8 pattern; one strong 3×3 patch in the top-left corner is added to a
    fraction `share` of class 0 and of class 1. The same feature is evidence for two labels: the network
    ties it to one class, the other group's loss rises, and the two groups pull the weights in opposite
    directions (Rosenfeld & Risteski's opposing signals).
    """
    rng = np.random.default_rng(cfg.seed)
    patterns = (rng.normal(size=(cfg.classes, 1, 8, 8)) * cfg.class_signal).astype(np.float32)
    y = rng.integers(0, cfg.classes, size=cfg.examples).astype(np.int64)
    x = patterns[y] + rng.normal(scale=1.0, size=(cfg.examples, 1, 8, 8)).astype(np.float32)
    carries = np.isin(y, (0, 1)) & (rng.random(cfg.examples) < cfg.share)
    x[carries, :, :3, :3] += cfg.strength
    ids = np.arange(cfg.examples)
    tr, va = train_test_split(ids, test_size=cfg.val_fraction, random_state=seed, stratify=y)
    position = {int(i): k for k, i in enumerate(tr)}
    planted = {f"class{c}_with_patch": sorted(position[int(i)] for i in tr if carries[i] and y[i] == c) for c in (0, 1)}
    return Split(
        torch.from_numpy(x[tr]),
        torch.from_numpy(y[tr]),
        torch.from_numpy(x[va]),
        torch.from_numpy(y[va]),
        n_classes=cfg.classes,
        modality="image",
        planted=planted,
    )


def _corpus(name: str) -> str:
    if name == "pydoc_topics":
        from pydoc_data.topics import topics

        return "\n\n".join(topics[k] for k in sorted(topics))
    raise ValueError(f"unknown corpus {name}")


def text(cfg: TextData, seed: int, context: int) -> Split:
    """Next-character prediction: windows of `context` characters; the last val_fraction of the text is held out."""
    corpus = _corpus(cfg.corpus)[: cfg.max_chars]
    vocab = "".join(sorted(set(corpus)))
    ids = torch.tensor([vocab.index(c) for c in corpus], dtype=torch.int64)
    cut = int(len(ids) * (1 - cfg.val_fraction))

    def windows(part: Tensor, stride: int) -> tuple[Tensor, Tensor]:
        starts = torch.arange(0, len(part) - context - 1, stride)
        seqs = torch.stack([part[s : s + context + 1] for s in starts.tolist()])
        return seqs[:, :-1], seqs[:, 1:]

    x_tr, y_tr = windows(ids[:cut], max(1, context // 2))
    x_va, y_va = windows(ids[cut:], context)
    return Split(x_tr, y_tr, x_va, y_va, n_classes=len(vocab), modality="text", vocab=vocab)


def uploaded(cfg: UploadedData, seed: int, path: Path) -> Split:
    """An uploaded dataset, stored by the API as a plain .npz of X and y: loaded without pickle."""
    with np.load(path, allow_pickle=False) as arrays:
        x, y = arrays["X"].astype(np.float32), arrays["y"]
    classification = y.dtype.kind in "iu"
    x_tr, x_va, y_tr, y_va = _split(x, y, cfg.val_fraction, seed, stratify=classification)
    return Split(
        *map(torch.from_numpy, (x_tr, y_tr, x_va, y_va)),
        n_classes=int(y.max()) + 1 if classification else None,
        modality="image" if x.ndim == 4 else "tabular",
    )


def _tensor(value: object, what: str, reference: str) -> Tensor:
    try:
        tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
    except (TypeError, ValueError) as exc:
        raise entrypoints.EntryPointError(f"{reference}: {what} is not an array ({exc})") from exc
    if tensor.is_floating_point():
        return tensor.float()
    if tensor.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        return tensor.long()
    raise entrypoints.EntryPointError(f"{reference}: {what} has dtype {tensor.dtype}, not numbers")


def _stacked(dataset: object, reference: str, which: str) -> tuple[Tensor, Tensor]:
    """A torch Dataset of (x, y) items, materialized."""
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[index, arg-type]
    if not items or not all(isinstance(item, tuple | list) and len(item) == 2 for item in items):
        raise entrypoints.EntryPointError(f"{reference}: the {which} Dataset's items must be (x, y) pairs")
    xs, ys = zip(*items, strict=True)
    return torch.stack([torch.as_tensor(np.asarray(x)) for x in xs]), torch.as_tensor(np.asarray(ys))


def _arrays(got: object, reference: str) -> entrypoints.Arrays:
    if isinstance(got, entrypoints.Arrays):
        return got
    if isinstance(got, tuple | list) and len(got) == 4:
        return entrypoints.Arrays(*got)
    if isinstance(got, tuple | list) and len(got) == 2 and all(hasattr(d, "__getitem__") and hasattr(d, "__len__") for d in got):
        (x_train, y_train), (x_val, y_val) = (_stacked(d, reference, w) for d, w in zip(got, ("training", "validation"), strict=True))
        return entrypoints.Arrays(x_train, y_train, x_val, y_val)
    raise entrypoints.EntryPointError(
        f"{reference} returned {type(got).__name__}, not (x_train, y_train, x_val, y_val), a (train, validation) pair of "
        "Datasets, or a dynascope.entrypoints.Arrays"
    )


def python_data(cfg: PythonData, seed: int, allow: list[str]) -> Split:
    """The team's data from its entry point, as tensors: integer targets are classes, float ones a regression."""
    got = _arrays(entrypoints.call(cfg.entrypoint, allow, seed=seed, **cfg.kwargs), cfg.entrypoint)
    names = ("x_train", "y_train", "x_val", "y_val")
    x_train, y_train, x_val, y_val = (_tensor(getattr(got, n), n, cfg.entrypoint) for n in names)
    for x, y, which in ((x_train, y_train, "training"), (x_val, y_val, "validation")):
        if len(x) != len(y) or (which == "training" and len(x) == 0):
            raise entrypoints.EntryPointError(f"{cfg.entrypoint}: the {which} set has {len(x)} inputs and {len(y)} targets")
    classes = got.classes
    if classes is None and not y_train.is_floating_point():
        classes = int(max(y_train.max(), y_val.max() if len(y_val) else 0)) + 1
    text = not x_train.is_floating_point() and classes is not None and y_train.shape == x_train.shape and x_train.dim() == 2
    modality = got.modality or ("text" if text else "image" if x_train.dim() == 4 else "tabular")
    return Split(x_train, y_train, x_val, y_val, n_classes=classes, modality=modality, vocab=got.vocab)


def load(cfg: Data, seed: int, context: int | None = None, uploads: Callable[[str], Path] | None = None) -> Split:
    match cfg:
        case DigitsData():
            return digits(cfg, seed)
        case TabularData():
            return tabular(cfg, seed)
        case GaussianMixtureData():
            return gaussian_mixture(cfg, seed)
        case TeacherStudentData():
            return teacher_student(cfg, seed)
        case LinearTeacherData():
            return linear_teacher(cfg, seed)
        case OpposingFeaturesData():
            return opposing_features(cfg, seed)
        case TextData():
            return text(cfg, seed, context or 64)
        case PythonData():
            from backend.config import get_settings

            return python_data(cfg, seed, entrypoints.prefixes(get_settings().entrypoints))
        case UploadedData():
            if uploads is None:
                raise ValueError("an uploaded dataset needs the store it lives in")
            return uploaded(cfg, seed, uploads(cfg.dataset))
    raise ValueError(f"unknown data kind {cfg.kind}")
