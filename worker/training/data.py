"""Datasets, generated from a seed or shipped inside a package: nothing is downloaded."""

import gzip
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn import datasets as sk
from sklearn.model_selection import train_test_split
from torch import Tensor

from backend.config import get_settings
from dynascope import entrypoints

from backend.spec import (
    Data,
    DigitsData,
    GaussianMixtureData,
    IdxData,
    ImageFolderData,
    LinearTeacherData,
    NpyData,
    OpposingFeaturesData,
    PythonData,
    TabularData,
    TeacherStudentData,
    TextData,
    TextFileData,
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
    return text_split(_corpus(cfg.corpus)[: cfg.max_chars], cfg.val_fraction, context)


def text_split(corpus: str, val_fraction: float, context: int) -> Split:
    """Next-character prediction: windows of `context` characters; the last val_fraction of the text is held out."""
    vocab = "".join(sorted(set(corpus)))
    ids = torch.tensor([vocab.index(c) for c in corpus], dtype=torch.int64)
    cut = int(len(ids) * (1 - val_fraction))

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
            return python_data(cfg, seed, get_settings().entrypoint_prefixes)
        case ImageFolderData() | NpyData() | IdxData() | TextFileData():
            root = get_settings().data_dir
            return from_disk(cfg, seed, context, under_root(root, cfg.path), root)  # type: ignore[arg-type]
        case UploadedData():
            if uploads is None:
                raise ValueError("an uploaded dataset needs the store it lives in")
            return uploaded(cfg, seed, uploads(cfg.dataset))
    raise ValueError(f"unknown data kind {cfg.kind}")


class OutsideDataRoot(ValueError):
    """A dataset path that is not under the worker's data root (or there is no root)."""


def under_root(root: Path | None, relative: str) -> Path:
    """The path inside the data root, with every symlink resolved; refused when it leads outside."""
    if root is None:
        raise OutsideDataRoot("this worker has no data root: the operator sets DYNASCOPE_DATA_DIR to read datasets from its disk")
    base = root.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise OutsideDataRoot(f"data.path {relative!r} leads outside the data root (DYNASCOPE_DATA_DIR)")
    if not path.exists():
        raise FileNotFoundError(f"data.path {relative!r}: nothing there under the data root")
    return path


def _contained(root: Path, file: Path) -> Path:
    """A file inside the data root once its symlinks are followed (a link out of the root is refused)."""
    if not file.resolve().is_relative_to(root.resolve()):
        raise OutsideDataRoot(f"{file.name} links outside the data root (DYNASCOPE_DATA_DIR)")
    return file


def _classified(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int, modality: str = "image") -> Split:
    """A stratified split (a plain one when a class has a single example)."""
    _, counts = np.unique(y, return_counts=True)
    x_tr, x_va, y_tr, y_va = _split(x, y.astype(np.int64), val_fraction, seed, stratify=bool(counts.min() >= 2))
    return Split(*map(torch.from_numpy, (x_tr, y_tr, x_va, y_va)), n_classes=int(y.max()) + 1, modality=modality)


def image_folder(cfg: ImageFolderData, seed: int, folder: Path, root: Path) -> Split:
    from PIL import Image

    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((folder / name).iterdir()):
            if file.suffix.lower() not in (".png", ".jpg", ".jpeg"):
                continue
            with Image.open(_contained(root, file)) as image:
                pixels = np.asarray(image.convert("L" if cfg.grayscale else "RGB").resize(cfg.size[::-1]), dtype=np.float32) / 255
            images.append(pixels[None] if cfg.grayscale else pixels.transpose(2, 0, 1))
            labels.append(label)
    if len(set(labels)) < 2:
        raise ValueError(f"data.path {cfg.path!r} needs a sub-folder of PNG or JPEG images per class, at least two (found {classes})")
    split = _classified(np.stack(images), np.array(labels), cfg.val_fraction, seed)
    if cfg.normalize:
        mean = split.x_train.mean((0, 2, 3), keepdim=True)
        std = split.x_train.std((0, 2, 3), keepdim=True) + 1e-6
        split.x_train, split.x_val = (split.x_train - mean) / std, (split.x_val - mean) / std
    return split


def npy(cfg: NpyData, seed: int, folder: Path, root: Path) -> Split:
    """X.npy memory-mapped (copy-on-write: the file is never written): the validation set is its last val_fraction
    of rows as stored, so that both sets stay views of the file and a batch reads only its rows."""
    x = np.load(_contained(root, folder / "X.npy"), mmap_mode="c", allow_pickle=False)
    y = np.load(_contained(root, folder / "y.npy"), allow_pickle=False)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"data.path {cfg.path!r}: X.npy has {len(x)} rows and y.npy {len(y)}")
    if x.dtype != np.float32:
        x = x.astype(np.float32)  # (a copy in memory: store float32 to stream from the file)
    classes = y.dtype.kind in "iu"
    y = y.astype(np.int64 if classes else np.float32)
    cut = max(1, int(len(x) * (1 - cfg.val_fraction)))
    tensors = (torch.from_numpy(a) for a in (x[:cut], y[:cut], x[cut:], y[cut:]))
    return Split(*tensors, n_classes=int(y.max()) + 1 if classes else None, modality="image" if x.ndim == 4 else "tabular")


IDX_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def _idx_file(folder: Path, root: Path, name: str) -> np.ndarray:
    """An IDX file of unsigned bytes (LeCun's format), plain or gzipped, in the folder or torchvision's <name>/raw."""
    for where in (folder, *(folder / sub / "raw" for sub in IDX_FOLDERS.values())):
        for candidate in (where / name, where / f"{name}.gz"):
            if candidate.exists():
                opener = gzip.open if candidate.suffix == ".gz" else open
                with opener(_contained(root, candidate), "rb") as f:
                    data = f.read()
                if data[:3] != b"\x00\x00\x08":
                    raise ValueError(f"{candidate.name} is not an IDX file of unsigned bytes")
                dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(data[3])]
                return np.frombuffer(data, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)
    raise FileNotFoundError(f"no {name} (or .gz) in {folder.name} or its MNIST/raw, FashionMNIST/raw")


def _cifar10(folder: Path, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10's binary version: records of a label byte and 3×32×32 pixel bytes."""
    where = folder / "cifar-10-batches-bin" if (folder / "cifar-10-batches-bin").is_dir() else folder
    files = [where / f"data_batch_{i}.bin" for i in range(1, 6) if (where / f"data_batch_{i}.bin").exists()]
    if not files:
        raise FileNotFoundError(f"no data_batch_1.bin … 5 (CIFAR-10's binary version) in {where.name}")
    records = np.concatenate([np.fromfile(_contained(root, f), np.uint8).reshape(-1, 1 + 3072) for f in files])
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0]


def idx(cfg: IdxData, seed: int, folder: Path, root: Path) -> Split:
    if cfg.kind == "cifar10":
        pixels, labels = _cifar10(folder, root)
    else:
        pixels = _idx_file(folder, root, "train-images-idx3-ubyte")[:, None]
        labels = _idx_file(folder, root, "train-labels-idx1-ubyte")
    pixels, labels = pixels[: cfg.max_examples], labels[: cfg.max_examples]
    return _classified((pixels / np.float32(255)).astype(np.float32), labels, cfg.val_fraction, seed)


def from_disk(cfg: ImageFolderData | NpyData | IdxData | TextFileData, seed: int, context: int | None, path: Path, root: Path) -> Split:
    match cfg:
        case ImageFolderData():
            return image_folder(cfg, seed, path, root)
        case NpyData():
            return npy(cfg, seed, path, root)
        case IdxData():
            return idx(cfg, seed, path, root)
        case TextFileData():
            return text_split(path.read_text(encoding="utf-8")[: cfg.max_chars], cfg.val_fraction, context or 64)
