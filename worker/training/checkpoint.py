"""A run's whole state in one safetensors file: weights, optimizer, random generators and loop position.

Model weights keep their own names (the file loads into the model with `strict=False`); the rest sits
under `optimizer/…` and `rng/…`, with non-tensor values as JSON in the file's metadata.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

FORMAT = "dynascope-train-state/1"


@dataclass
class TrainState:
    step: int  # the next update to run
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    torch_rng: Tensor
    batch_rng: Tensor
    order: Tensor
    cursor: int
    first_loss: float
    train_seconds: float = 0.0
    probe_seconds: dict[str, float] = field(default_factory=dict)


def pack(state: TrainState) -> tuple[dict[str, Tensor], dict[str, str]]:
    # Copies: the loop goes on updating these tensors in place after handing the state over.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.model.items()}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state.optimizer["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/state/{index}/{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng/torch"] = state.torch_rng
    tensors["rng/batches"] = state.batch_rng
    tensors["loop/order"] = state.order.to("cpu", copy=True)
    metadata = {
        "format": FORMAT,
        "step": str(state.step),
        "cursor": str(state.cursor),
        "first_loss": repr(state.first_loss),
        "train_seconds": repr(state.train_seconds),
        "probe_seconds": json.dumps(state.probe_seconds),
        "optimizer_groups": json.dumps(state.optimizer["param_groups"]),
        "optimizer_scalars": json.dumps(scalars),
    }
    return tensors, metadata


def read(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A safetensors file's tensors and metadata (plain data: reading it never runs code)."""
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}  # noqa: SIM118 (not a dict)


def unpack(tensors: dict[str, Tensor], metadata: dict[str, str]) -> TrainState:
    if metadata.get("format") != FORMAT:
        raise ValueError(f"not a resumable checkpoint (format {metadata.get('format')!r})")
    model = {k: v for k, v in tensors.items() if "/" not in k}
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/state/"):
            _, _, index, name = key.split("/", 3)
            opt_state.setdefault(int(index), {})[name] = value
    for index, values in json.loads(metadata["optimizer_scalars"]).items():
        opt_state.setdefault(int(index), {}).update(values)
    return TrainState(
        step=int(metadata["step"]),
        model=model,
        optimizer={"state": opt_state, "param_groups": json.loads(metadata["optimizer_groups"])},
        torch_rng=tensors["rng/torch"],
        batch_rng=tensors["rng/batches"],
        order=tensors["loop/order"],
        cursor=int(metadata["cursor"]),
        first_loss=float(metadata["first_loss"]),
        train_seconds=float(metadata["train_seconds"]),
        probe_seconds=json.loads(metadata["probe_seconds"]),
    )
