"""What a spec will build, known before anything runs: the data's shape and classes, and the parameter count.

Plain arithmetic (the API has no torch); tests check it against the models the worker builds.
"""

import math
from dataclasses import dataclass
from functools import lru_cache

from backend.models import Dataset
from backend.spec import (
    CNNModel,
    Data,
    JobSpec,
    LinearModel,
    MLPModel,
    ResNetModel,
    TransformerModel,
)

_TABULAR = {"iris": (4, 3), "wine": (13, 3), "breast_cancer": (30, 2)}


@dataclass(frozen=True)
class DataShape:
    input_shape: tuple[int, ...]
    outputs: int  # classes, or a regression's targets per example


@lru_cache
def _pydoc_vocab_size(max_chars: int) -> int:
    from pydoc_data.topics import topics

    return len(set("\n\n".join(topics[k] for k in sorted(topics))[:max_chars]))


def data_shape(data: Data, uploaded: Dataset | None = None) -> DataShape | None:
    """The data's shape, or None where only the worker can know it (data from an entry point or its disk)."""
    match data.kind:
        case "mnist" | "fashion_mnist":
            return DataShape((1, 28, 28), 10)
        case "cifar10":
            return DataShape((3, 32, 32), 10)
        case "python" | "image_folder" | "npy" | "text_file":
            return None
        case "upload":
            if uploaded is None:
                raise ValueError("an uploaded dataset's shape comes from its row")
            return DataShape(tuple(uploaded.input_shape), uploaded.classes or 1)
        case "digits":
            return DataShape((1, 8, 8), 10)
        case "iris" | "wine" | "breast_cancer":
            dim, classes = _TABULAR[data.kind]
            return DataShape((dim,), classes)
        case "gaussian_mixture":
            return DataShape((data.dim,), data.classes)
        case "teacher_student":
            return DataShape((data.dim,), 1)
        case "linear_teacher":
            return DataShape((data.dim,), data.outputs)
        case "opposing_features":
            return DataShape((1, 8, 8), data.classes)
        case "text":
            return DataShape((), _pydoc_vocab_size(data.max_chars))
    raise ValueError(f"unknown data kind {data.kind}")


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _conv(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def misfit(spec: JobSpec, uploaded: Dataset) -> str | None:
    """Why the spec's model and loss cannot train on this uploaded dataset, or None."""
    images = len(uploaded.input_shape) == 3
    if spec.model.kind in ("cnn", "resnet") and not images:
        return f"model.kind {spec.model.kind} needs images; dataset {uploaded.id} has examples of shape {uploaded.input_shape}"
    if spec.model.kind == "transformer":
        return "model.kind transformer goes with text data, not an uploaded array"
    if uploaded.classes is None and spec.train.loss != "mse":
        return f"dataset {uploaded.id} is a regression (float targets): set train.loss to mse"
    return None


def parameter_count(spec: JobSpec, uploaded: Dataset | None = None) -> int | None:
    """The model's parameters, or None where only the worker can count them (a model or data from an entry point)."""
    shape = data_shape(spec.data, uploaded)
    if shape is None or spec.model.kind == "python":
        return None
    model, n_out = spec.model, shape.outputs
    match model:
        case MLPModel():
            sizes = [math.prod(shape.input_shape), *model.widths, n_out]
            return sum(_linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        case CNNModel():
            channels, size, total = shape.input_shape[0], shape.input_shape[1], 0
            for width in model.channels:
                total += _conv(channels, width, 3) + (2 * width if model.batch_norm else 0)
                size = size // 2 if size >= 2 else size
                channels = width
            return total + _linear(channels * size * size, n_out)
        case ResNetModel():
            w, n = model.width, (model.depth - 2) // 6
            total, c_in = _conv(shape.input_shape[0], w, 3, bias=False) + 2 * w, w
            for stage, c_out in enumerate((w, 2 * w, 4 * w)):
                for block in range(n):
                    total += _conv(c_in, c_out, 3, bias=False) + _conv(c_out, c_out, 3, bias=False) + 4 * c_out
                    if (stage > 0 and block == 0) or c_in != c_out:
                        total += _conv(c_in, c_out, 1, bias=False) + 2 * c_out
                    c_in = c_out
            return total + _linear(c_in, n_out)
        case LinearModel():
            sizes = [math.prod(shape.input_shape), *[model.width] * (model.depth - 1), n_out]
            return sum(_linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        case TransformerModel():
            d, v = model.width, n_out
            head_norms = 2 * 2 * (d // model.heads) if model.qk_layernorm else 0
            block = 2 * 2 * d + _linear(d, 3 * d) + _linear(d, d) + head_norms + _linear(d, 4 * d) + _linear(4 * d, d)
            return v * d + model.context * d + model.layers * block + 2 * d + _linear(d, v)
    raise ValueError(f"unknown model kind {model.kind}")
