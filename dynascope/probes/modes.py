"""The modes probe: a deep linear network's end-to-end map along the singular modes of its training data's
input–output correlation, and each mode's closed-form trajectory (dynascope.analysis.deep_linear) from its
strength at the first probe. The map is read from the network's outputs on the basis vectors, without
gradient: training is untouched."""

from torch.nn import functional as F

from dynascope.analysis import deep_linear
from dynascope.probes.base import Batch, Calls, Output, Probe, Run
from dynascope.results import ModesResult
from dynascope.settings import ModesProbe


class Modes(Probe):
    name = "modes"
    Settings = ModesProbe

    def __init__(self, cfg: ModesProbe, run: Run) -> None:
        super().__init__(cfg, run)
        self.depth = len(deep_linear.linear_layers(run.model))
        targets = run.y_train if run.n_classes is None else F.one_hot(run.y_train, run.n_classes)
        self.modes = deep_linear.input_output_modes(run.x_train, targets, cfg.modes)
        self.curvature = deep_linear.curvature(run.loss_fn, run.x_train, run.y_train, self.modes)
        self.time = 0.0  # Σ lr over the updates so far
        self.start: tuple[int, float, list[float]] | None = None  # the first probe: step, time, strengths

    def after_step(self, batch: Batch) -> None:
        self.time += batch.lr

    def before_step(self, step: int, calls: Calls) -> Output:
        product = deep_linear.end_to_end(self.run.model, tuple(self.run.x_train.shape[1:]))
        strengths = deep_linear.strengths(product, self.modes).tolist()
        self.start = self.start or (step, self.time, strengths)
        start_step, start_time, start_strengths = self.start
        metrics = {"modes/off_diagonal": deep_linear.off_diagonal(product, self.modes)}
        for number, (s, a, a0) in enumerate(zip(self.modes.s.tolist(), strengths, start_strengths, strict=True), start=1):
            metrics[f"modes/strength/{number}"] = a
            theory = deep_linear.strength_at(self.time - start_time, s, a0, self.depth, self.curvature)
            if theory is not None:
                metrics[f"modes/theory/{number}"] = theory
        document = ModesResult(
            singular_values=self.modes.s.tolist(),
            strengths=strengths,
            depth=self.depth,
            curvature=self.curvature,
            start_step=start_step,
            start_strengths=start_strengths,
            time=self.time - start_time,
            whiteness=self.modes.whiteness,
            formula=deep_linear.formula(self.depth),
            full_batch=self.run.full_batch,
            examples=len(self.run.x_train),
        )
        return Output(metrics, [(step, document)])
