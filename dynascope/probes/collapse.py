"""The collapse probe: NC1–NC4 (dynascope.analysis.collapse) of the classifier's input features on fixed
stratified samples of the training and validation sets, read by a hook on the classifier in a forward pass of
its own in eval mode (no gradient, no random state: training is untouched)."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from dynascope.analysis import collapse as nc
from dynascope.analysis.hvp import module_mode
from dynascope.probes.base import Calls, Output, Probe, Run
from dynascope.probes.samples import stratified_sample
from dynascope.results import MAX_COSINE_CLASSES, CollapseResult
from dynascope.settings import CollapseProbe

SAMPLE_SEED = 5  # the samples' rows: run seed + this
CHUNK = 1024  # examples per forward pass


def classifier(model: nn.Module, name: str | None) -> tuple[str, nn.Linear]:
    """The linear layer by its module name, or the model's last one."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if name is not None:
        found = dict(model.named_modules()).get(name)
        if not isinstance(found, nn.Linear):
            raise ValueError(f"probes.collapse.layer: {name!r} is not a linear layer of the model (these are: {[n for n, _ in linears]})")
        return name, found
    if not linears:
        raise ValueError("probes.collapse: the model has no linear layer whose input could be the feature")
    return linears[-1]


@contextmanager
def _inputs_of(layer: nn.Module, into: list[Tensor]) -> Iterator[None]:
    handle = layer.register_forward_pre_hook(lambda _, args: into.append(args[0].detach().flatten(0, -2)))
    try:
        yield
    finally:
        handle.remove()


class Collapse(Probe):
    name = "collapse"
    Settings = CollapseProbe

    def __init__(self, cfg: CollapseProbe, run: Run) -> None:
        super().__init__(cfg, run)
        self.layer, self.head = classifier(run.model, cfg.layer)
        if run.n_classes is not None and self.head.out_features != run.n_classes:
            raise ValueError(
                f"probes.collapse.layer: {self.layer!r} has {self.head.out_features} outputs, not one per class ({run.n_classes})"
            )
        self.train = self._sample(run.x_train, run.y_train)
        has_val = run.x_val is not None and run.y_val is not None and len(run.y_val) > 0
        self.val = self._sample(run.x_val, run.y_val) if has_val else None  # type: ignore[arg-type]

    def _sample(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        rows = stratified_sample(y, self.cfg.examples, self.run.seed + SAMPLE_SEED).to(x.device)
        return x[rows], y[rows]

    @torch.no_grad()
    def _read(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The features (one row per prediction: a sequence model's positions too) and the predicted classes."""
        features: list[Tensor] = []
        predictions = []
        with module_mode(self.run.model, "eval"), _inputs_of(self.head, features):
            for start in range(0, len(x), CHUNK):
                predictions.append(self.run.model(x[start : start + CHUNK]).argmax(-1).flatten())
        return torch.cat(features), torch.cat(predictions)

    def before_step(self, step: int, calls: Calls) -> Output:
        classes = self.run.n_classes
        if classes is None:
            return Output(results=[(step, CollapseResult(layer=self.layer, skipped="the targets are not classes (a regression)"))])
        (x, y), document = self.train, CollapseResult(layer=self.layer, classes=classes)
        features, predicted = self._read(x)
        means = nc.class_means(features, y.flatten(), classes)
        equinorm, equiangle = nc.nc2(means)
        metrics = {
            "collapse/nc1": nc.nc1(features, y.flatten(), means),
            "collapse/nc2_equinorm": equinorm,
            "collapse/nc2_equiangle": equiangle,
            "collapse/nc3": nc.nc3(self.head.weight, means),
            "collapse/nc4": nc.nc4(features, predicted, means),
        }
        document.features, document.examples = features.shape[1], len(x)
        document.norms = means.centred.norm(dim=1).tolist()
        if int(means.present.sum()) <= MAX_COSINE_CLASSES:
            document.cosines = nc.mean_cosines(means).tolist()
        if self.val is not None:
            (x_val, _), labels = self.val, self.val[1].flatten()
            features, predicted = self._read(x_val)
            metrics["collapse/nc1_val"] = nc.nc1(features, labels, nc.class_means(features, labels, classes))
            metrics["collapse/nc4_val"] = nc.nc4(features, predicted, means)  # the training sample's centres
            document.val_examples = len(x_val)
        return Output(metrics, [(step, document)])
