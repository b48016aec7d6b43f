"""The model zoo. Each builder takes the spec's model section and the data's shape and classes."""

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from backend.config import get_settings
from backend.spec import CNNModel, LinearModel, MLPModel, Model, PythonModel, ResNetModel, TransformerModel
from dynascope import entrypoints
from dynascope.analysis import deep_linear
from dynascope.analysis.hvp import module_mode
from dynascope.hookpoints import AttentionLogits
from worker.training.data import Split

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def mlp(n_in: int, widths: list[int], n_out: int, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for width in widths:
        layers += [nn.Linear(n_in, width), ACTIVATIONS[activation]()]
        n_in = width
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


def cnn(cfg: CNNModel, shape: tuple[int, ...], n_out: int) -> nn.Sequential:
    channels, size = shape[0], shape[1]
    layers: list[nn.Module] = []
    for width in cfg.channels:
        layers += [nn.Conv2d(channels, width, 3, padding=1)]
        layers += [nn.BatchNorm2d(width)] if cfg.batch_norm else []
        layers += [nn.ReLU()]
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        channels = width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * size * size, n_out))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet(cfg: ResNetModel, shape: tuple[int, ...], n_out: int) -> nn.Sequential:
    blocks_per_stage = (cfg.depth - 2) // 6
    w = cfg.width
    layers: list[nn.Module] = [nn.Conv2d(shape[0], w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
    c_in = w
    for stage, c_out in enumerate((w, 2 * w, 4 * w)):
        for block in range(blocks_per_stage):
            layers.append(BasicBlock(c_in, c_out, 2 if stage > 0 and block == 0 else 1))
            c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, n_out))


class CausalSelfAttention(nn.Module):
    """Written out (not fused) so that Hessian-vector products can differentiate it twice."""

    def __init__(self, width: int, heads: int, context: int, qk_layernorm: bool) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_layernorm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_layernorm else nn.Identity()
        self.register_buffer("mask", torch.ones(context, context, dtype=torch.bool).tril(), persistent=False)
        self.logits = AttentionLogits()  # where the instability probe reads them

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        scores = self.logits(scores.masked_fill(~self.mask[:t, :t], float("-inf")))
        y = scores.softmax(-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TransformerModel) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.width), nn.LayerNorm(cfg.width)
        self.attn = CausalSelfAttention(cfg.width, cfg.heads, cfg.context, cfg.qk_layernorm)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, 4 * cfg.width), nn.GELU(), nn.Linear(4 * cfg.width, cfg.width))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """A decoder-only language model: token + position embeddings, pre-LN blocks, final LN, linear head."""

    def __init__(self, cfg: TransformerModel, vocab_size: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, cfg.width)
        self.positions = nn.Embedding(cfg.context, cfg.width)
        self.blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg.layers)])
        self.ln = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, vocab_size)

    def forward(self, ids: Tensor) -> Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.head(self.ln(self.blocks(self.tokens(ids) + self.positions(pos))))


class Scale(nn.Module):
    """Multiplies its input by a constant (the output multiplier α)."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        return x * self.alpha

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


@torch.no_grad()
def scaled(model: nn.Sequential, cfg: MLPModel | CNNModel) -> nn.Sequential:
    """The model with its initial parameters times init_scale, and its output times output_scale."""
    for p in model.parameters():
        p.mul_(cfg.init_scale)
    return nn.Sequential(*model, Scale(cfg.output_scale)) if cfg.output_scale != 1.0 else model


@torch.no_grad()
def linear(cfg: LinearModel, split: Split) -> nn.Sequential:
    """A deep linear network; its balanced initialization is aligned with the training data's modes."""
    sizes = [math.prod(split.input_shape), *[cfg.width] * (cfg.depth - 1), split.outputs]
    layers = [nn.Linear(a, b, bias=False) for a, b in zip(sizes, sizes[1:], strict=False)]
    if cfg.init == "balanced":
        targets = split.y_train if split.n_classes is None else F.one_hot(split.y_train, split.n_classes)
        modes = deep_linear.input_output_modes(split.x_train, targets)
        weights = deep_linear.balanced_layers(modes, [tuple(layer.weight.shape) for layer in layers], cfg.scale)
    else:
        weights = [torch.randn_like(layer.weight) * cfg.scale / math.sqrt(layer.in_features) for layer in layers]
    for layer, weight in zip(layers, weights, strict=True):
        layer.weight.copy_(weight)
    return nn.Sequential(nn.Flatten(), *layers)


def python_model(cfg: PythonModel, split: Split) -> nn.Module:
    """The team's model from its entry point, told what the data is."""
    described = entrypoints.DataDescription(split.input_shape, split.outputs, split.n_classes, split.modality, split.vocab)
    model = entrypoints.call(cfg.entrypoint, get_settings().entrypoint_prefixes, described, **cfg.kwargs)
    if not isinstance(model, nn.Module):
        raise entrypoints.EntryPointError(f"{cfg.entrypoint} returned {type(model).__name__}, not a torch.nn.Module")
    return model


@torch.no_grad()
def check_fit(model: nn.Module, split: Split) -> None:
    """The model's output on two training examples fits the targets (a score per class, or the regression's
    targets), or an error that says how it does not; in eval mode, outside the random stream."""
    x, y = split.x_train[:2], split.y_train[:2]
    with module_mode(model, "eval"), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        out = model(x)
    if not isinstance(out, Tensor):
        raise ValueError(f"the model returns {type(out).__name__}, not a tensor")
    if split.n_classes is not None:
        expected = (*y.shape, split.n_classes)
        if tuple(out.shape) != expected:
            raise ValueError(
                f"the model's output has shape {tuple(out.shape)} for 2 examples, but {split.n_classes} classes need {expected}"
            )
    elif out.numel() != y.numel():
        raise ValueError(f"the model's output has shape {tuple(out.shape)} for 2 examples, but the targets have {tuple(y.shape)}")


def build(cfg: Model, split: Split) -> nn.Module:
    """The spec's model for this data (its input shape, and a class or target per output)."""
    input_shape, n_out = split.input_shape, split.outputs
    match cfg:
        case MLPModel():
            return scaled(mlp(math.prod(input_shape), cfg.widths, n_out, cfg.activation), cfg)
        case CNNModel():
            return scaled(cnn(cfg, input_shape, n_out), cfg)
        case ResNetModel():
            return resnet(cfg, input_shape, n_out)
        case TransformerModel():
            return Transformer(cfg, n_out)
        case LinearModel():
            return linear(cfg, split)
        case PythonModel():
            return python_model(cfg, split)
    raise ValueError(f"unknown model kind {cfg.kind}")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pick_device(preference: str = "auto") -> torch.device:
    """`auto`: the GPU when there is one. Chosen at run time, never hard-coded."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)
