"""The job spec: the contract between the API, the dashboard and the worker.

Every model is strict (unknown keys are errors) so that a typo never silently trains the wrong thing.
"""

from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MLPModel(StrictModel):
    kind: Literal["mlp"]
    widths: Annotated[list[Annotated[int, Field(gt=0, le=65536)]], Field(min_length=1, max_length=64)] = [
        128,
        128,
    ]
    activation: Literal["relu", "tanh", "gelu"] = "relu"


class CNNModel(StrictModel):
    """3×3 convolutions (each followed by ReLU and 2×2 max-pooling while the image allows), then a linear head."""

    kind: Literal["cnn"]
    channels: Annotated[list[Annotated[int, Field(gt=0, le=4096)]], Field(min_length=1, max_length=16)] = [32, 32]
    batch_norm: bool = False


class ResNetModel(StrictModel):
    """CIFAR-style ResNet (He et al. 2016): depth 6n+2, three stages of width w, 2w, 4w."""

    kind: Literal["resnet"]
    depth: int = Field(8, ge=8, le=110)
    width: int = Field(16, gt=0, le=512)

    @model_validator(mode="after")
    def _depth_is_6n_plus_2(self) -> "ResNetModel":
        if (self.depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 (8, 14, 20, …), not {self.depth}")
        return self


class TransformerModel(StrictModel):
    """A small decoder-only language model (pre-LayerNorm), for character-level text."""

    kind: Literal["transformer"]
    layers: int = Field(2, gt=0, le=48)
    heads: int = Field(4, gt=0, le=64)
    width: int = Field(128, gt=0, le=8192)
    context: int = Field(64, gt=1, le=4096)
    qk_layernorm: bool = Field(False, description="LayerNorm on queries and keys (a mitigation of logit growth)")
    z_loss: float = Field(0.0, ge=0.0, description="weight of the output z-loss, mean of log² Σ exp(logits)")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "TransformerModel":
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        return self


Model = Annotated[MLPModel | CNNModel | ResNetModel | TransformerModel, Field(discriminator="kind")]


class DigitsData(StrictModel):
    """scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes), shipped inside the package."""

    kind: Literal["digits"]
    val_fraction: float = Field(0.2, gt=0.0, lt=0.9)


class TabularData(StrictModel):
    """scikit-learn's shipped tables, standardized with the training split's mean and deviation."""

    kind: Literal["iris", "wine", "breast_cancer"]
    val_fraction: float = Field(0.2, gt=0.0, lt=0.9)


class GeneratedData(StrictModel):
    """A synthetic set drawn from its own seed (independent of the training seed)."""

    examples: int = Field(2000, ge=20, le=1_000_000)
    seed: int = Field(0, ge=0)
    val_fraction: float = Field(0.2, gt=0.0, lt=0.9)


class GaussianMixtureData(GeneratedData):
    """Classes as Gaussian blobs around random centres `separation` apart (in units of the noise)."""

    kind: Literal["gaussian_mixture"]
    dim: int = Field(20, gt=0, le=10_000)
    classes: int = Field(4, ge=2, le=1000)
    separation: float = Field(3.0, gt=0.0)


class TeacherStudentData(GeneratedData):
    """Regression on the outputs of a random tanh teacher network plus Gaussian noise (use loss: mse)."""

    kind: Literal["teacher_student"]
    dim: int = Field(20, gt=0, le=10_000)
    teacher_width: int = Field(16, gt=0, le=4096)
    noise: float = Field(0.1, ge=0.0)


class OpposingFeaturesData(GeneratedData):
    """8×8 images of weak class patterns plus one strong planted patch, shared by a fraction of two classes
    with opposite meaning: the setting of opposing signals. The planted example ids are kept with the data."""

    kind: Literal["opposing_features"]
    classes: int = Field(4, ge=2, le=100)
    strength: float = Field(4.0, gt=0.0, description="the patch's value, against class patterns of size ~1")
    share: float = Field(0.3, gt=0.0, le=1.0, description="fraction of classes 0 and 1 that carry the patch")
    class_signal: float = Field(
        1.0, gt=0.0, le=100.0, description="scale of the class patterns (against noise of scale 1): small keeps the patch dominant"
    )


class TextData(StrictModel):
    """Character-level text: a corpus that ships with Python (pydoc's topic help) for next-character prediction."""

    kind: Literal["text"]
    corpus: Literal["pydoc_topics"] = "pydoc_topics"
    max_chars: int = Field(200_000, ge=1000, le=100_000_000)
    val_fraction: float = Field(0.1, gt=0.0, lt=0.9)


class UploadedData(StrictModel):
    """A dataset uploaded through POST /api/v1/datasets, by its id."""

    kind: Literal["upload"]
    dataset: str = Field(pattern=r"^[0-9a-f]{32}$")
    val_fraction: float = Field(0.2, gt=0.0, lt=0.9)


Data = Annotated[
    DigitsData | TabularData | GaussianMixtureData | TeacherStudentData | OpposingFeaturesData | TextData | UploadedData,
    Field(discriminator="kind"),
]
IMAGE_DATA = {"digits", "opposing_features"}
TEXT_DATA = {"text"}
REGRESSION_DATA = {"teacher_student"}


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


class AdamOptimizer(StrictModel):
    """Adam, or AdamW (decoupled weight decay)."""

    kind: Literal["adam", "adamw"]
    lr: float = Field(gt=0.0, le=1e3)
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)


class SAMOptimizer(StrictModel):
    """Sharpness-aware minimization (Foret et al. 2021) around a base optimizer: two gradients per step."""

    kind: Literal["sam"]
    rho: float = Field(0.05, gt=0.0, le=10.0)
    base: Annotated[SGDOptimizer | AdamOptimizer, Field(discriminator="kind")]

    @property
    def lr(self) -> float:
        return self.base.lr


Optimizer = Annotated[SGDOptimizer | AdamOptimizer | SAMOptimizer, Field(discriminator="kind")]


class LRSchedule(StrictModel):
    """Multiplies the optimizer's lr. `cosine`: linear warm-up then cosine to min_fraction; `linear`: warm-up
    then linear to min_fraction; `step`: × gamma every step_size steps; `constant`: after any warm-up, 1."""

    kind: Literal["constant", "cosine", "linear", "step"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_fraction: float = Field(0.0, ge=0.0, le=1.0)
    step_size: int = Field(1000, gt=0)
    gamma: float = Field(0.1, gt=0.0, le=1.0)


class TrainConfig(StrictModel):
    steps: int = Field(gt=0, le=10_000_000)
    batch_size: int = Field(128, gt=0, le=1_000_000, description="capped at the training set (full batch: GD)")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    eval_every: int = Field(50, gt=0, description="Steps between validation evaluations (and the last step).")
    loss: Literal["cross_entropy", "mse"] = Field(
        "cross_entropy", description="mse on classes: mean squared error against one-hot targets"
    )
    schedule: LRSchedule = LRSchedule()
    grad_clip: float | None = Field(None, gt=0.0, description="clip the global gradient norm (null: off)")
    checkpoint_every: int | None = Field(
        1000, gt=0, description="keep the whole training state every N steps: a lost worker resumes there"
    )
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast on a GPU (fp32 on a CPU)")
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


class HessianSettings(StrictModel):
    """What the Hessian analysis computes, on a fixed sample of the training set."""

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
    gauss_newton: bool = Field(False, description="per top eigenvector, the share vᵀGv/vᵀHv of its curvature")
    save_eigenvectors: bool = Field(True, description="keep the top-k eigenvectors (safetensors) at each call")


class HessianProbe(Schedule, HessianSettings):
    """The Hessian's spectrum during training, on a schedule."""


class HessianAnalysis(HessianSettings):
    """The Hessian's spectrum at a checkpoint a job kept (its last one by default), run on demand."""

    kind: Literal["hessian"] = "hessian"
    step: int | None = Field(None, ge=0, description="the checkpoint's step (null: the latest)")


def _odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError("must be odd, so that the centre is a grid point")
    return value


Resolution = Annotated[int, Field(ge=3, le=201, description="points per axis, odd"), AfterValidator(_odd)]


class LandscapeSettings(StrictModel):
    """A loss surface (or curve) around the weights, on a fixed stratified sample of the training set.

    `surface[i][j] = L(θ + xs[i]·d1 + ys[j]·d2)`. `random`: Gaussian directions, filter-normalized (Li et al.
    2018); `hessian`: the top two Hessian eigenvectors (unit length), the sharpest plane.
    """

    plane: Literal["random", "hessian"] = "random"
    dims: Literal[1, 2] = Field(2, description="1: a curve along d1; 2: a surface")
    resolution: Resolution = 25
    span: float | None = Field(
        None, gt=0.0, le=1000.0, description="the grid spans ±span (null: 1 for random planes, 3/√λ1 for the Hessian's)"
    )
    seed: int = Field(123, ge=0, le=2**31 - 1, description="seed of the random directions")
    normalization: Literal["filter", "layer", "none"] = "filter"
    include_bias_bn: bool = Field(False, description="move biases and normalization parameters too (Li et al.: no)")
    orthogonalize: bool = Field(False, description="make d2 orthogonal to d1 (random planes)")
    examples: int = Field(1000, gt=0, le=1_000_000, description="size of the stratified sample (capped at the train set)")
    batch_norm: Literal["eval", "recompute"] = Field(
        "eval", description="eval: the centre's running statistics; recompute: each point's own, over the sample"
    )
    adaptive: bool = Field(False, description="compute a fraction of the grid, interpolate the rest (2-D, ≥ 17 points)")
    save_directions: bool = Field(True, description="keep the directions (safetensors)")

    @model_validator(mode="after")
    def _adaptive_fits(self) -> "LandscapeSettings":
        if self.adaptive and (self.dims != 2 or self.resolution < 17):
            raise ValueError("adaptive needs a 2-D grid of at least 17 points per axis")
        return self


class LandscapeProbe(Schedule, LandscapeSettings):
    """A loss landscape during training, on a schedule (typically `at: [end]`)."""


class LandscapeAnalysis(LandscapeSettings):
    """A loss landscape around a checkpoint a job kept (its last one by default), run on demand."""

    kind: Literal["landscape"] = "landscape"
    step: int | None = Field(None, ge=0, description="the checkpoint's step (null: the latest)")


class _SurfaceSampling(StrictModel):
    examples: int = Field(1000, gt=0, le=1_000_000, description="size of the stratified sample (capped at the train set)")
    batch_norm: Literal["eval", "recompute"] = Field(
        "eval", description="eval: the weights' running statistics; recompute: each point's own, over the sample"
    )


class TrajectoryAnalysis(_SurfaceSampling):
    """The training path on the plane of its first two principal components (PCA of checkpoint − final weights
    over the checkpoints the job kept up to `step`), with the loss surface of that plane under it."""

    kind: Literal["trajectory"] = "trajectory"
    step: int | None = Field(None, ge=0, description="the path's last checkpoint, the plane's centre (null: the latest)")
    resolution: Resolution = 25
    margin: float = Field(0.25, ge=0.0, le=10.0, description="the grid reaches this fraction beyond the path")
    adaptive: bool = Field(False, description="compute a fraction of the grid, interpolate the rest (≥ 17 points)")

    @model_validator(mode="after")
    def _adaptive_fits(self) -> "TrajectoryAnalysis":
        if self.adaptive and self.resolution < 17:
            raise ValueError("adaptive needs at least 17 points per axis")
        return self


class InterpolationAnalysis(_SurfaceSampling):
    """Loss and accuracy along the straight line θ(α) = (1 − α)·θ_from + α·θ_to between two checkpoints of this
    job, or from one of its checkpoints to another job's latest (same model). BatchNorm statistics are
    interpolated too; α = 0 and α = 1 are always points of the line."""

    kind: Literal["interpolation"] = "interpolation"
    step: int | None = Field(None, ge=0, description="θ_from: this job's checkpoint (null: the first kept; with to_job, the latest)")
    to_step: int | None = Field(None, ge=0, description="θ_to: this job's checkpoint (null: the latest)")
    to_job: int | None = Field(None, ge=1, le=2**31 - 1, description="θ_to: that job's latest checkpoint instead")
    points: int = Field(41, ge=3, le=2001)
    range: tuple[float, float] = Field((-0.5, 1.5), description="α from, to")

    @model_validator(mode="after")
    def _range_holds_the_ends(self) -> "InterpolationAnalysis":
        lo, hi = self.range
        if not (lo <= 0.0 and hi >= 1.0):
            raise ValueError("range must reach from ≤ 0 to ≥ 1, so that both checkpoints are on the line")
        if self.to_job is not None and self.to_step is not None:
            raise ValueError("give to_step (this job) or to_job (another job's latest), not both")
        return self


def _analysis_kind(value: Any) -> str | None:
    return value.get("kind", "hessian") if isinstance(value, dict) else getattr(value, "kind", None)


CheckpointAnalysis = Annotated[
    Annotated[HessianAnalysis, Tag("hessian")]
    | Annotated[LandscapeAnalysis, Tag("landscape")]
    | Annotated[TrajectoryAnalysis, Tag("trajectory")]
    | Annotated[InterpolationAnalysis, Tag("interpolation")],
    Discriminator(_analysis_kind),
]


class GradStatsProbe(Schedule):
    """First-order statistics of the training batch's gradient at each due step, from that step's own backward
    pass, per layer and global; `end` means the last update. Cosines compare successive due steps."""

    spectra: bool = Field(True, description="singular values of each linear layer's batch gradient (low-rank route)")
    histogram_examples: int = Field(
        8, ge=0, le=1024, description="per-example gradient histogram on a fixed sample of this many examples (0: none)"
    )
    histogram_elements: int = Field(200_000, ge=1000, le=10_000_000, description="coordinates sampled per example")
    details_every: int | None = Field(None, gt=0, description="steps between spectra and histograms (null: every due step)")
    ema: float = Field(0.95, ge=0.0, lt=1.0, description="decay of the noise scale's EMAs")
    two_batch: int | None = Field(
        None, ge=1, description="also B_simple by the two-batch-size estimator (McCandlish et al., App. A.1): the gradient "
        "of this many of the batch's examples against the whole batch's — one extra forward and backward over them "
        "at each due step (null: the per-example estimator only)",
    )  # fmt: skip


class SignalsProbe(StrictModel):
    """Opposing signals during training: per-example losses on a fixed probe set at every step (taken from the
    training forward itself when the batch is the whole training set), their changes and heavy tail; a search
    for opposing groups on a schedule, when the probe loss rises and when the sharpness (with the hessian
    probe) reaches its stability threshold; a pair is reported once the steps after it
    show its groups' losses swinging out of phase."""

    probe_examples: int = Field(
        1024, gt=0, le=100_000, description="size of the fixed stratified probe set (full-batch training: the training set)"
    )
    detect_every: int = Field(100, gt=0, description="steps between two scheduled searches")
    on_rise: bool = Field(True, description="search also when the probe set's mean loss rises")
    on_sharpness: bool = Field(
        True, description="search also when the Hessian probe's sharpness reaches its stability threshold (2/lr under GD)"
    )
    min_gap: int = Field(10, ge=1, description="at least this many steps between two searches")
    window: int = Field(20, ge=3, le=500, description="steps on each side for the anti-phase score")
    antiphase_max: float = Field(-0.5, ge=-1.0, le=0.0, description="report pairs whose score is at most this")
    top_k: int = Field(48, ge=6, le=1024, description="examples with the largest |Δℓ| considered")
    z_min: float = Field(3.0, ge=0.0, description="robust z-score an outlier needs")
    cut: float = Field(0.8, gt=0.0, le=2.0, description="cosine distance at which clusters are cut")
    min_size: int = Field(3, ge=2)
    tau: float = Field(0.3, ge=0.0, le=1.0, description="pairs need cos(ḡ_A, ḡ_B) ≤ −tau")
    z_expand: float = Field(3.0, ge=0.0, description="robust z-score that puts an example on a group's side")
    max_pairs: int = Field(8, ge=1, le=64, description="reported pairs whose losses are tracked to the end")


class Probes(StrictModel):
    """Analyses run during training, each on its own schedule."""

    hessian: HessianProbe | None = None
    landscape: LandscapeProbe | None = None
    gradstats: GradStatsProbe | None = None
    signals: SignalsProbe | None = None


class JobSpec(StrictModel):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")
    model: Model
    data: Data
    optimizer: Optimizer
    train: TrainConfig
    probes: Probes = Probes()

    @model_validator(mode="after")
    def _model_fits_data(self) -> "JobSpec":
        model, data = self.model.kind, self.data.kind
        if data == "upload":
            return self  # checked against the uploaded arrays when the job is submitted (backend.shapes)
        if model in ("cnn", "resnet") and data not in IMAGE_DATA:
            raise ValueError(f"model.kind {model} needs images (data.kind one of {sorted(IMAGE_DATA)}), not {data}")
        if (model == "transformer") != (data in TEXT_DATA):
            raise ValueError(f"model.kind transformer goes with text data and only with it (here: {model} on {data})")
        if data in REGRESSION_DATA and self.train.loss != "mse":
            raise ValueError(f"data.kind {data} is a regression: set train.loss to mse")
        return self

    @model_validator(mode="after")
    def _steps_in_range(self) -> "JobSpec":
        for name in Probes.model_fields:
            probe = getattr(self.probes, name)
            late = [s for s in getattr(probe, "at", []) if s != "end" and s > self.train.steps]
            if late:
                raise ValueError(f"probes.{name}.at has steps after the last ({self.train.steps}): {late}")
        return self

    @model_validator(mode="after")
    def _small_batch_in_the_batch(self) -> "JobSpec":
        stats = self.probes.gradstats
        if stats is not None and stats.two_batch is not None and stats.two_batch >= self.train.batch_size:
            raise ValueError(f"probes.gradstats.two_batch ({stats.two_batch}) must be smaller than train.batch_size ({self.train.batch_size})")
        return self


EXAMPLE_SPEC_YAML = """\
name: digits-mlp-lr0.5
model: {kind: mlp, widths: [128, 128]}
data: {kind: digits, val_fraction: 0.2}
optimizer: {kind: sgd, lr: 0.5, momentum: 0.0}
train: {steps: 2000, batch_size: 128, seed: 0, eval_every: 50}
"""


def field_errors(exc: ValidationError, raw: Any) -> list[dict[str, Any]]:
    """Pydantic's errors with the locations a user wrote: union tags (`optimizer.sgd.lr`) are dropped."""
    out = []
    for err in exc.errors(include_url=False):
        node, loc = raw, []
        for part in err["loc"]:
            if isinstance(node, dict) and node.get("kind") == part and part not in node:
                continue  # pydantic's tag for the member of a discriminated union
            loc.append(part)
            if isinstance(node, dict):
                node = node.get(part)
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                node = None
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("kind")  # the problem is the kind itself
        out.append({"loc": loc, "msg": err["msg"], "type": err["type"]})
    return out


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
