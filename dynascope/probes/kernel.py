"""The kernel probe: the empirical NTK (dynascope.analysis.ntk) on a fixed stratified sample of the training set,
in eval mode and without touching the model's gradients or the random state; how far it has moved since the
previous probe (its velocity) and since the first, how well it aligns with the labels, and how far the weights
themselves have moved (the lazy regime: weights and kernel nearly still while the loss falls)."""

import torch
from torch import Tensor
from torch.nn import functional as F

from dynascope.analysis import ntk
from dynascope.analysis.hvp import module_mode
from dynascope.probes.base import Calls, Output, Probe, Run
from dynascope.probes.samples import stratified_sample
from dynascope.results import KernelResult
from dynascope.settings import KernelProbe

SAMPLE_SEED = 11  # the sample's rows: run seed + this
MAX_PER_OUTPUT = 10  # outputs up to which each output's own kernel is aligned with its own target
MAX_DRAWN = 64  # examples of the sample whose kernel the document keeps (the heatmap)


def _targets(y: Tensor, classes: int | None) -> Tensor:
    """A row per example: one-hot classes (sequence labels: their counts), or the regression's targets."""
    if classes is None:
        return y.reshape(len(y), -1).double()
    return F.one_hot(y.reshape(len(y), -1), classes).sum(1).double()


class Kernel(Probe):
    name = "kernel"
    Settings = KernelProbe

    def __init__(self, cfg: KernelProbe, run: Run) -> None:
        super().__init__(cfg, run)
        rows = stratified_sample(run.y_train, cfg.examples, run.seed + SAMPLE_SEED)
        order = rows[torch.argsort(run.y_train.cpu()[rows].reshape(len(rows), -1)[:, 0], stable=True)]  # by label: blocks show
        self.x = run.x_train[order.to(run.x_train.device)]
        self.targets = _targets(run.y_train[order.to(run.y_train.device)], run.n_classes)
        self.first: tuple[Tensor, Tensor] | None = None  # the kernel (summed) and the weights at the first probe
        self.previous: Tensor | None = None

    def _weights(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.run.model.parameters() if p.requires_grad]).double()

    def before_step(self, step: int, calls: Calls) -> Output:
        with module_mode(self.run.model, "eval"):
            full = ntk.gram(self.run.model, self.x, self.cfg.route)
        kernel, weights = ntk.summed(full), self._weights()
        metrics = {"kernel/alignment": ntk.target_alignment(kernel, self.targets), "kernel/trace": float(kernel.trace()) / len(kernel)}
        if self.first is None:
            self.first = (kernel, weights)
        else:  # (0 at the first probe, by definition: left out of the log-scale charts)
            metrics["kernel/distance"] = ntk.velocity(self.first[0], kernel)
            metrics["kernel/weight_change"] = float(torch.linalg.norm(weights - self.first[1]) / torch.linalg.norm(self.first[1]))
        if self.previous is not None:
            metrics["kernel/velocity"] = ntk.velocity(self.previous, kernel)
        self.previous = kernel
        outputs = len(full)
        if 1 < outputs <= MAX_PER_OUTPUT and self.targets.shape[1] == outputs:
            for o in range(outputs):
                metrics[f"kernel/alignment_output/{o}"] = ntk.target_alignment(full[o], self.targets[:, o])
        drawn = kernel[:MAX_DRAWN, :MAX_DRAWN]
        document = KernelResult(
            examples=len(self.x),
            outputs=outputs,
            parameters=len(weights),
            drawn=drawn.tolist(),
            labels=self.targets[:MAX_DRAWN].argmax(1).tolist() if self.run.n_classes is not None else None,
        )
        return Output(metrics, [(step, document)])
