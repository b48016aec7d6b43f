"""What each probe computes and when: the settings a job spec and the in-loop tracker share.

Pydantic only (no torch), so the API validates them without the numerics; every model is strict (unknown keys
are errors) so that a typo never silently computes the wrong thing.
"""

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, model_validator

# A boolean given as true or false, never a string or a number read as one ("TRUE", 1): the schema says boolean.
Flag = Annotated[bool, Strict()]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Schedule(StrictModel):
    """When a probe runs: every N steps, and/or at listed steps; `end` is after the last update (step = the number
    of updates), `last` is the last update (its step, with the weights before it).

    A probe at step s sees the weights before update s (step 0: at initialization).
    """

    # The rule _needs_a_time checks, as the published schema says it.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["every"], "properties": {"every": {"type": "integer"}}},
                {"required": ["at"], "properties": {"at": {"minItems": 1}}},
            ]
        }
    )
    every: int | None = Field(None, gt=0)
    at: list[Annotated[int, Field(ge=0)] | Literal["end"] | Literal["last"]] = []

    @model_validator(mode="after")
    def _needs_a_time(self) -> "Schedule":
        if self.every is None and not self.at:
            raise ValueError("give `every: N` and/or `at: [steps, last or end]`")
        return self

    def due(self, step: int, total: int) -> bool:
        if self.every is not None and step % self.every == 0:
            return True
        return step in self.at or (step == total and "end" in self.at) or (step == total - 1 and "last" in self.at)


class HessianSettings(StrictModel):
    """What the Hessian analysis computes, on a fixed sample of the training set."""

    top_k: int = Field(5, ge=1, le=100, description="largest eigenvalues (with eigenvectors and residuals)")
    negative: int = Field(0, ge=0, le=20, description="most negative eigenvalues too (0: none)")
    tol: float = Field(1e-3, gt=0.0, lt=1.0, description="stop when every ‖Hv − λv‖ ≤ tol·|λ|")
    examples: int = Field(1000, gt=0, le=1_000_000, description="size of the fixed sample (capped at the train set)")
    batch: int | None = Field(None, gt=0, description="examples per forward pass (null: the whole sample in one)")
    graphs: Literal["auto", "keep", "recompute"] = Field(
        "auto",
        description="keep each batch's first-order graph between products (fast; memory grows with examples), recompute it "
        "per product (about 1.4 times the time; in eval mode a batch in pieces that fit graph_budget_mb), or auto: keep "
        "while they fit graph_budget_mb",
    )
    graph_budget_mb: float = Field(
        1024.0, gt=0.0, description="memory the kept graphs may take (auto), or one recomputed product (in eval mode)"
    )
    mode: Literal["eval", "train"] = "eval"
    trace: Flag = False
    density: Flag = False
    density_probes: int = Field(10, ge=2, le=100)
    density_steps: int = Field(50, ge=5, le=500)
    layerwise: Flag = False
    gauss_newton: Flag = Field(False, description="per top eigenvector, the share vᵀGv/vᵀHv of its curvature")
    save_eigenvectors: Flag = Field(True, description="keep the top-k eigenvectors (safetensors) at each call")


class HessianProbe(Schedule, HessianSettings):
    """The Hessian's spectrum during training, on a schedule."""


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
    include_bias_bn: Flag = Field(False, description="move biases and normalization parameters too (Li et al.: no)")
    orthogonalize: Flag = Field(False, description="make d2 orthogonal to d1 (random planes)")
    examples: int = Field(1000, gt=0, le=1_000_000, description="size of the stratified sample (capped at the train set)")
    batch_norm: Literal["eval", "recompute"] = Field(
        "eval", description="eval: the centre's running statistics; recompute: each point's own, over the sample"
    )
    adaptive: Flag = Field(False, description="compute a fraction of the grid, interpolate the rest (2-D, ≥ 17 points)")
    save_directions: Flag = Field(True, description="keep the directions (safetensors)")

    @model_validator(mode="after")
    def _adaptive_fits(self) -> "LandscapeSettings":
        if self.adaptive and (self.dims != 2 or self.resolution < 17):
            raise ValueError("adaptive needs a 2-D grid of at least 17 points per axis")
        return self


class LandscapeProbe(Schedule, LandscapeSettings):
    """A loss landscape during training, on a schedule (typically `at: [end]`)."""


class SurfaceSampling(StrictModel):
    examples: int = Field(1000, gt=0, le=1_000_000, description="size of the stratified sample (capped at the train set)")
    batch_norm: Literal["eval", "recompute"] = Field(
        "eval", description="eval: the weights' running statistics; recompute: each point's own, over the sample"
    )


class TrajectorySettings(SurfaceSampling):
    """The loss surface on the plane of a path's first two principal components, with the path on it."""

    resolution: Resolution = 25
    margin: float = Field(0.25, ge=0.0, le=10.0, description="the grid reaches this fraction beyond the path")
    adaptive: Flag = Field(False, description="compute a fraction of the grid, interpolate the rest (≥ 17 points)")

    @model_validator(mode="after")
    def _adaptive_fits(self) -> "TrajectorySettings":
        if self.adaptive and self.resolution < 17:
            raise ValueError("adaptive needs at least 17 points per axis")
        return self


class InterpolationSettings(SurfaceSampling):
    """Loss and accuracy along θ(α) = (1 − α)·θ_from + α·θ_to; α = 0 and α = 1 are always points of the line."""

    points: int = Field(41, ge=3, le=2001)
    range: tuple[float, float] = Field((-0.5, 1.5), description="α from, to")

    @model_validator(mode="after")
    def _range_holds_the_ends(self) -> "InterpolationSettings":
        lo, hi = self.range
        if not (lo <= 0.0 and hi >= 1.0):
            raise ValueError("range must reach from ≤ 0 to ≥ 1, so that both checkpoints are on the line")
        return self


class GradStatsProbe(Schedule):
    """First-order statistics of the training batch's gradient at each due step, from that step's own backward
    pass, per layer and global (so it runs with an update: `last`, not `end`). Cosines compare successive due
    steps."""

    spectra: Flag = Field(True, description="singular values of each linear layer's batch gradient (low-rank route)")
    histogram_examples: int = Field(
        8, ge=0, le=1024, description="per-example gradient histogram on a fixed sample of this many examples (0: none)"
    )
    histogram_elements: int = Field(200_000, ge=1000, le=10_000_000, description="coordinates sampled per example")
    details_every: int | None = Field(None, gt=0, description="steps between spectra and histograms (null: every due step)")
    ema: float = Field(0.95, ge=0.0, lt=1.0, description="decay of the noise scale's EMAs")
    two_batch: int | None = Field(
        None,
        ge=1,
        description="also B_simple by the two-batch-size estimator (McCandlish et al., App. A.1): the gradient of this "
        "many of the batch's examples against the whole batch's — one extra forward and backward over them at each due "
        "step (null: the per-example estimator only)",
    )

    @model_validator(mode="after")
    def _runs_with_an_update(self) -> "GradStatsProbe":
        if "end" in self.at:
            raise ValueError("gradstats reads a training step's gradient: there is none after the last update (`end`); use `last`")
        return self


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
    on_rise: Flag = Field(True, description="search also when the probe set's mean loss rises")
    on_sharpness: Flag = Field(
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


class CollapseProbe(Schedule):
    """Neural collapse of a classifier's last-layer features (NC1–NC4) on fixed stratified samples of the training
    and validation sets."""

    examples: int = Field(1000, ge=2, le=100_000, description="size of each fixed stratified sample (train and validation)")
    layer: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_.]+$",
        description="the classifier: a linear layer by module name, whose input is the feature (null: the last linear layer)",
    )


LayerName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.]+$")]


class RepresentationsSettings(StrictModel):
    """Linear CKA (Kornblith et al. 2019) of layers' outputs on a fixed stratified sample of the training set."""

    examples: int = Field(256, ge=8, le=8192, description="size of the fixed stratified sample")
    layers: list[LayerName] | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="module names whose outputs are compared (null: the model's blocks: its top-level modules with "
        "parameters, inside Sequential and ModuleList containers)",
    )
    batch: int | None = Field(
        None,
        ge=8,
        description="the minibatch estimator (Nguyen et al.: unbiased HSIC averaged over batches of this many examples; "
        "memory batch² per layer) instead of the full one on the whole sample (memory examples² per layer)",
    )


class RepresentationsProbe(Schedule, RepresentationsSettings):
    """Each layer against itself at the first probe (how far it has gone) and at the previous one (how fast it
    moves), and every pair of the layers at the same step."""


class KernelProbe(Schedule):
    """The empirical neural tangent kernel on a fixed stratified sample of the training set: its velocity between
    successive probes and distance from the first (1 − cosine of the Gram matrices), its centred alignment with
    the labels, its trace, and the relative change of the weights."""

    examples: int = Field(64, ge=4, le=1024, description="size of the fixed stratified sample (the kernel is examples² per output pair)")
    route: Literal["rows", "products"] | None = Field(
        None,
        description="rows: form the Jacobian (examples·outputs·parameters floats), then J Jᵀ; products: Jacobian–vector "
        "products, a chunk of rows at a time (null: rows when the Jacobian fits 256 MiB)",
    )


class ModesProbe(Schedule):
    """A deep linear network's end-to-end map along the singular modes of the training data's input–output
    correlation (Saxe et al. 2014), with each mode's closed-form trajectory from its strength at the first probe."""

    modes: int = Field(8, ge=1, le=64, description="the largest modes followed")


class InstabilityProbe(Schedule):
    """What Wortsman et al. (2023) watch in a transformer trained at a high learning rate: each attention layer's
    pre-softmax logits (their growth collapses attention to one-hot), the output's log-normalizer log Z (its drift
    from 0), and per parameter group the gradient's RMS against Adam's ε and the update's RMS; from the step's own
    forward and backward where the hooks see them, else on a fixed probe batch. Every step it also watches the loss
    for spikes (above the median of the previous `spike_window` steps by `spike_factor`)."""

    groups: Literal["kind", "tensor", "optimizer", "all"] = Field(
        "kind",
        description="parameter groups of the update statistics: kind (the parameter's name with layer indices as *), tensor "
        "(each parameter), optimizer (its param groups), all (the whole model); `all` is always recorded too",
    )
    onehot: float = Field(0.9, gt=0.0, lt=1.0, description="a head is near one-hot when its mean largest attention weight exceeds this")
    attention_examples: int | None = Field(
        4,
        gt=0,
        le=1_000_000,
        description="examples of the step's batch whose attention logits are read (null: all; each layer's statistics pass over "
        "examples × heads × queries × keys numbers about ten times, inside the step)",
    )
    examples: int = Field(32, ge=1, le=4096, description="size of the fixed probe batch (used only where the step's own pass is not seen)")
    spike_window: int = Field(50, ge=3, le=10_000, description="steps of the running median a loss spike is measured against")
    spike_factor: float = Field(
        1.5, gt=1.0, le=100.0, description="a spike begins where the loss exceeds the running median by this factor"
    )


class Probes(StrictModel):
    """Analyses run during training, each on its own schedule."""

    hessian: HessianProbe | None = None
    landscape: LandscapeProbe | None = None
    gradstats: GradStatsProbe | None = None
    signals: SignalsProbe | None = None
    collapse: CollapseProbe | None = None
    representations: RepresentationsProbe | None = None
    kernel: KernelProbe | None = None
    modes: ModesProbe | None = None
    instability: InstabilityProbe | None = None
