"""The representations probe: linear CKA (dynascope.analysis.cka) of chosen layers' outputs on a fixed stratified
sample of the training set, read by hooks in a forward pass of its own in eval mode (no gradient, no random
state: training is untouched). Each layer is kept between probes as the Grams of its outputs, never as features."""

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from dynascope.analysis import cka
from dynascope.analysis.hvp import module_mode
from dynascope.probes.base import Calls, Output, Probe, Run
from dynascope.probes.samples import stratified_sample
from dynascope.results import RepresentationsResult
from dynascope.settings import RepresentationsProbe

SAMPLE_SEED = 7  # the sample's rows: run seed + this
MAX_LAYERS = 16  # the default blocks, evenly spread when a model has more
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def blocks(model: nn.Module, prefix: str = "") -> list[str]:
    """The model's blocks: its top-level modules with parameters, looking inside containers."""
    found = []
    for name, child in model.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, CONTAINERS):
            found += blocks(child, f"{full}.")
        elif any(True for _ in child.parameters()):
            found.append(full)
    return found


def chosen_layers(model: nn.Module, names: list[str] | None, field: str = "probes.representations.layers") -> dict[str, nn.Module]:
    """The modules by name (`field`: the setting they came from, for errors), or the model's blocks."""
    modules = dict(model.named_modules())
    if names is None:
        names = blocks(model)
        if len(names) > MAX_LAYERS:
            names = [names[round(i * (len(names) - 1) / (MAX_LAYERS - 1))] for i in range(MAX_LAYERS)]
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"{field}: {missing} are not modules of the model (its blocks: {blocks(model)})")
    if not names:
        raise ValueError(f"{field}: the model has no module with parameters to compare")
    return {n: modules[n] for n in names}


@contextmanager
def _outputs_of(layers: dict[str, nn.Module], into: dict[str, list[Tensor]]) -> Iterator[None]:
    def keep(name: str):  # noqa: ANN202
        return lambda _module, _args, out: into[name].append((out[0] if isinstance(out, tuple) else out).detach().flatten(1))

    handles = [layer.register_forward_hook(keep(name)) for name, layer in layers.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def layer_grams(
    model: nn.Module, layers: dict[str, nn.Module], x: Tensor, parts: list[slice], field: str = "probes.representations.layers"
) -> tuple[dict[str, list[Tensor]], dict[str, int]]:
    """Each layer's output Grams over the sample's batches, prepared as cka.cka reads them (see cka.grams), and
    its features per example; from forward passes in eval mode."""
    grams: dict[str, list[Tensor]] = {name: [] for name in layers}
    widths: dict[str, int] = {}
    with module_mode(model, "eval"):
        for part in parts:
            outputs: dict[str, list[Tensor]] = {name: [] for name in layers}
            with _outputs_of(layers, outputs):
                model(x[part])
            for name, calls in outputs.items():
                if not calls:
                    raise ValueError(f"{field}: {name!r} takes no part in the model's forward")
                features = calls[0]  # (a layer called twice in a forward: its first call)
                k = cka.gram(features)
                grams[name].append(cka.centred(k) if len(parts) == 1 else k.fill_diagonal_(0))
                widths[name] = features.shape[1]
    return grams, widths


def estimator(parts: list[slice]) -> str:
    size = parts[0].stop - parts[0].start
    return "full" if len(parts) == 1 else f"minibatch: unbiased HSIC over {len(parts)} batches of {size}"


def sample(run: Run, examples: int) -> Tensor:
    """The fixed stratified sample of the training set the representations are read on."""
    rows = stratified_sample(run.y_train, examples, run.seed + SAMPLE_SEED).to(run.x_train.device)
    return run.x_train[rows]


class Representations(Probe):
    name = "representations"
    Settings = RepresentationsProbe

    def __init__(self, cfg: RepresentationsProbe, run: Run) -> None:
        super().__init__(cfg, run)
        self.layers = chosen_layers(run.model, cfg.layers)
        self.x = sample(run, cfg.examples)
        self.parts = cka.batches(len(self.x), cfg.batch)
        self.first: dict[str, list[Tensor]] | None = None
        self.previous: dict[str, list[Tensor]] | None = None

    def before_step(self, step: int, calls: Calls) -> Output:
        grams, widths = layer_grams(self.run.model, self.layers, self.x, self.parts)
        self.first = self.first or grams
        metrics = {f"cka/first/{name}": cka.cka(self.first[name], g) for name, g in grams.items()}
        if self.previous is not None:
            metrics |= {f"cka/previous/{name}": cka.cka(self.previous[name], g) for name, g in grams.items()}
        self.previous = grams
        document = RepresentationsResult(
            layers=list(grams),
            features=[widths[name] for name in grams],
            examples=len(self.x),
            estimator=estimator(self.parts),
            matrix=[[None if math.isnan(v) else v for v in row] for row in cka.matrix(grams)],
        )
        return Output(metrics, [(step, document)])
