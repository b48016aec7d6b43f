"""Uploaded datasets: read as plain arrays (never unpickled), checked, and kept as a normalized .npz.

A `.npz` must hold `X` (examples × features, or examples × channels × height × width) and `y` (one
integer class or one float target per example). A CSV has a header row and numbers only; its target column
is named (default: the last).
"""

import csv
import io
import zipfile
from dataclasses import dataclass

import numpy as np


class UploadError(ValueError):
    """What is wrong with the file, in words a user can act on."""


@dataclass
class ParsedDataset:
    x: np.ndarray
    y: np.ndarray
    classes: int | None  # None: regression

    def to_npz(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, X=self.x, y=self.y)
        return buffer.getvalue()


def _check(x: np.ndarray, y: np.ndarray) -> ParsedDataset:
    if x.dtype.kind not in "fiub" or y.dtype.kind not in "fiub":
        raise UploadError(f"X and y must hold numbers (got {x.dtype} and {y.dtype})")
    if x.ndim not in (2, 4):
        raise UploadError(f"X must be examples × features or examples × channels × height × width, not shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise UploadError(f"y must hold one value per example: X has {len(x)}, y has shape {y.shape}")
    if len(x) < 10:
        raise UploadError(f"{len(x)} examples: at least 10 are needed")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise UploadError("X holds NaN or infinite values")
    if y.dtype.kind in "iub":
        if y.min() < 0:
            raise UploadError("class labels in y must be 0, 1, 2, …")
        classes = int(y.max()) + 1
        if classes < 2 or classes > 100_000:
            raise UploadError(f"{classes} classes: need between 2 and 100000")
        return ParsedDataset(x, y.astype(np.int64), classes)
    if not np.isfinite(y).all():
        raise UploadError("y holds NaN or infinite values")
    return ParsedDataset(x, y.astype(np.float32), None)


def parse_npz(data: bytes, max_decompressed: int) -> ParsedDataset:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise UploadError("not a .npz file (a zip of .npy arrays)") from None
    members = archive.infolist()
    total = sum(m.file_size for m in members)
    if total > max_decompressed:
        raise UploadError(f"the arrays unpack to {total} bytes, over the limit of {max_decompressed}")
    for m in members:
        if m.compress_size and m.file_size / m.compress_size > 1000:
            raise UploadError(f"{m.filename} expands {m.file_size // m.compress_size}× (a zip bomb?): refused")
    names = {m.filename for m in members}
    if not {"X.npy", "y.npy"} <= names:
        raise UploadError(f"the .npz must hold arrays X and y (it has {sorted(n.removesuffix('.npy') for n in names)})")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return _check(arrays["X"], arrays["y"])
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise UploadError(f"unreadable arrays (pickled objects are never loaded): {exc}") from None


def parse_csv(data: bytes, target: str | None) -> ParsedDataset:
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UploadError(f"not a UTF-8 CSV file: {exc}") from None
    if len(rows) < 2:
        raise UploadError("a CSV needs a header row and data rows")
    header = [h.strip() for h in rows[0]]
    column = header.index(target) if target in header else None
    if target is not None and column is None:
        raise UploadError(f"no column {target!r}; the columns are {header}")
    column = len(header) - 1 if column is None else column
    try:
        values = np.array([[float(v) for v in row] for row in rows[1:] if row], dtype=np.float64)
    except ValueError as exc:
        raise UploadError(f"every value must be a number: {exc}") from None
    if values.shape[1] != len(header):
        raise UploadError("every row must have as many values as the header")
    y = values[:, column]
    x = np.delete(values, column, axis=1)
    integral = np.all(y == np.round(y)) and y.min() >= 0
    return _check(x, y.astype(np.int64) if integral else y)
