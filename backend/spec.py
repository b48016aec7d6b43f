"""The job spec: the contract between the API, the dashboard and the worker.

Every model is strict (unknown keys are errors) so that a typo never silently trains the wrong thing.
"""

from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MLPModel(StrictModel):
    kind: Literal["mlp"]
    widths: Annotated[list[Annotated[int, Field(gt=0, le=65536)]], Field(min_length=1, max_length=64)] = [
        128,
        128,
    ]
    activation: Literal["relu", "tanh", "gelu"] = "relu"


class DigitsData(StrictModel):
    """scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes), shipped inside the package."""

    kind: Literal["digits"]
    val_fraction: float = Field(0.2, gt=0.0, lt=0.9)


class SGDOptimizer(StrictModel):
    kind: Literal["sgd"]
    lr: float = Field(gt=0.0, le=1e3)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "SGDOptimizer":
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("nesterov needs momentum > 0")
        return self


class TrainConfig(StrictModel):
    steps: int = Field(gt=0, le=10_000_000)
    batch_size: int = Field(128, gt=0, le=1_000_000)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    eval_every: int = Field(50, gt=0, description="Steps between validation evaluations (and the last step).")
    divergence_factor: float | None = Field(
        1000.0, gt=1.0, description="End as diverged when the loss exceeds this multiple of the first loss (null: off)."
    )


class Schedule(StrictModel):
    """When a probe runs: every N steps, and/or at listed steps; `end` is after the last update.

    A probe at step s sees the weights before update s (step 0: at initialization).
    """

    every: int | None = Field(None, gt=0)
    at: list[Annotated[int, Field(ge=0)] | Literal["end"]] = []

    @model_validator(mode="after")
    def _needs_a_time(self) -> "Schedule":
        if self.every is None and not self.at:
            raise ValueError("give `every: N` and/or `at: [steps or end]`")
        return self

    def due(self, step: int, total: int) -> bool:
        if self.every is not None and step % self.every == 0:
            return True
        return step in self.at or (step == total and "end" in self.at)


class HessianProbe(Schedule):
    """The Hessian's spectrum of the training loss on a fixed sample of the training set."""

    top_k: int = Field(5, ge=1, le=100, description="largest eigenvalues (with eigenvectors and residuals)")
    negative: int = Field(0, ge=0, le=20, description="most negative eigenvalues too (0: none)")
    tol: float = Field(1e-3, gt=0.0, lt=1.0, description="stop when every ‖Hv − λv‖ ≤ tol·|λ|")
    examples: int = Field(1000, gt=0, le=1_000_000, description="size of the fixed sample (capped at the train set)")
    mode: Literal["eval", "train"] = "eval"
    trace: bool = False
    density: bool = False
    density_probes: int = Field(10, ge=2, le=100)
    density_steps: int = Field(50, ge=5, le=500)
    layerwise: bool = False
    save_eigenvectors: bool = Field(True, description="keep the top-k eigenvectors (safetensors) at each call")


class Probes(StrictModel):
    """Analyses run during training, each on its own schedule."""

    hessian: HessianProbe | None = None


class JobSpec(StrictModel):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")
    model: MLPModel
    data: DigitsData
    optimizer: SGDOptimizer
    train: TrainConfig
    probes: Probes = Probes()

    @model_validator(mode="after")
    def _steps_in_range(self) -> "JobSpec":
        for name in Probes.model_fields:
            probe = getattr(self.probes, name)
            late = [s for s in probe.at if s != "end" and s > self.train.steps] if probe else []
            if late:
                raise ValueError(f"probes.{name}.at has steps after the last ({self.train.steps}): {late}")
        return self


EXAMPLE_SPEC_YAML = """\
name: digits-mlp-lr0.5
model: {kind: mlp, widths: [128, 128]}
data: {kind: digits, val_fraction: 0.2}
optimizer: {kind: sgd, lr: 0.5, momentum: 0.0}
train: {steps: 2000, batch_size: 128, seed: 0, eval_every: 50}
"""


class SpecParseError(ValueError):
    """The text is not valid YAML/JSON, or not a mapping."""


def parse_spec_text(text: str) -> dict:
    """Parse a YAML or JSON document (JSON is YAML) into the raw mapping JobSpec validates."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecParseError(f"not valid YAML or JSON{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise SpecParseError("the spec must be a mapping (an object with name, model, data, optimizer, train)")
    return data
