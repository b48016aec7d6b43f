"""The result documents probes and analyses record, one model per kind: the worker (or the tracker) builds them,
the API documents them in OpenAPI, the dashboard's figures and the HTML report read them.

Pydantic only (no torch). Series (metrics) are not documents: they are points per name and step.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def recorded(self) -> dict[str, Any]:
        """The document as it is recorded: only the fields it was given (what was not computed is absent)."""
        return self.model_dump(by_alias=True, exclude_unset=True)


class Timed(Document):
    """A document of one whole measurement; the probe runner sets how long it took and its peak memory."""

    seconds: float | None = None
    peak_bytes: int | None = Field(None, description="memory above what was in use when it began, at its peak (dynascope.memory)")


# --- summary and resume (the training loop's own) ---


class RunFacts(Document):
    """Recorded at step 0: what the run trains on."""

    parameters: int
    train_examples: int
    val_examples: int
    modality: str
    classes: int | None
    planted: dict[str, list[int]] = {}


class RunEnd(Document):
    """Recorded at the last step: the final validation metrics and where the time went."""

    val_loss: float | None = None
    val_accuracy: float | None = None
    train_seconds: float
    steps_per_second: float | None
    probe_seconds: dict[str, float]


class Resume(Document):
    attempt: int
    from_step: int


class Outage(Document):
    """The database was away while the job trained: its points were kept by the worker and written once it was back."""

    seconds: float
    from_step: int
    to_step: int
    points: int


# --- hessian ---


class Trace(Document):
    value: float
    stderr: float
    method: str
    hvps: int


class Density(Document):
    grid: list[float]
    density: list[float]
    sigma: float
    probes: int
    steps: int
    bulk_edge: float
    outliers: int = Field(description="eigenvalues beyond the bulk edge, by the density's mass there")
    top_k_beyond_edge: int
    moments: dict[str, list[float]]


class HessianResult(Timed):
    eigenvalues: list[float] = Field(description="the top-k, largest first")
    residuals: list[float] = Field(description="‖Hv − λv‖ of each")
    converged: bool
    hvps_top: int
    threshold: float = Field(description="the stability threshold at this step")
    threshold_rule: str
    examples: int
    mode: Literal["eval", "train"]
    loss: float
    parameters: int
    n_classes: int | None
    preconditioned_sharpness: float | None = Field(None, description="Adam: λmax(P⁻¹H)")
    negative_eigenvalues: list[float] | None = None
    negative_residuals: list[float] | None = None
    trace: Trace | None = None
    density: Density | None = None
    gauss_newton_fraction: list[float] | None = None
    layerwise_lambda_max: dict[str, float] | None = None
    hvps: int
    products: str | None = Field(None, description="how the Hessian-vector products were taken (graphs kept or recomputed)")
    analysis_id: int | None = None


# --- gradient statistics ---


class LayerSpectrum(Document):
    nuclear: float
    top: float
    sigma1_ratio: float | None
    frobenius: float
    rank_bound: int


class Histogram(Document):
    edges: list[float]
    counts: list[int]
    examples: int
    elements_per_example: int
    parameters: int


class GradStatsDetails(Document):
    """The gradstats probe's detail steps: which rule each parameter's per-example gradients came from, the
    layers' gradient spectra and a histogram of per-example gradient elements."""

    rules: dict[str, str]
    batch_size: int
    dead_fraction: float | None
    spectra: dict[str, LayerSpectrum] | None = None
    histogram: Histogram | None = None


# --- opposing signals ---


class SignalsGroup(Document):
    core: list[int] = Field(description="training-set rows of the group's core")
    expanded: list[int]
    mean_delta: float
    intra_cos: float | None
    loss: list[float] = Field(description="the core's mean loss at each of the pair's steps")
    loss_expanded: list[float]
    examples: list[Any] = Field(description="a few of the core's inputs as they are (images, rows, token ids)")
    mean_input_minus_all: list[Any] | None = None
    snippets: list[str] | None = None
    classes: list[int] | None = None


class HessianAlignment(Document):
    eigenvector_step: int
    abs_cos: float
    random_abs_cos: float


class SignalsPair(Document):
    """An opposing pair, reported once its groups' losses swung out of phase after the search that found it."""

    pair: int
    cos: float
    antiphase: float | None
    window: int
    hessian_alignment: HessianAlignment | None
    trigger: list[str]
    probe_examples: int
    steps: list[int]
    A: SignalsGroup
    B: SignalsGroup


# --- neural collapse ---


class CollapseResult(Timed):
    """The collapse probe at one step: where the features were read, on what, and the class means' geometry
    (their norms, and their cosines when there are at most MAX_COSINE_CLASSES classes). `skipped` says why
    nothing was measured (a regression target, found only once the data is loaded)."""

    layer: str | None
    features: int | None = None
    classes: int | None = None
    examples: int | None = None
    val_examples: int | None = None
    norms: list[float] | None = None
    cosines: list[list[float]] | None = None
    skipped: str | None = None


MAX_COSINE_CLASSES = 50


# --- representations ---


class RepresentationsResult(Timed):
    """The representations probe at one step: the layers compared, their widths (features per example), on what,
    by which estimator, and the CKA between every pair of them (null where a layer does not vary)."""

    layers: list[str]
    features: list[int]
    examples: int
    estimator: str
    matrix: list[list[float | None]]


# --- the neural tangent kernel ---


class KernelResult(Timed):
    """The kernel probe at one step: on what, and the kernel (summed over outputs) of the sample's first
    examples, ordered by label, with their labels."""

    examples: int
    outputs: int
    parameters: int
    drawn: list[list[float]] = Field(description="Σ_o Θ_oo(x_i, x_j) for the first examples of the sample")
    labels: list[int] | None = None


# --- deep linear networks ---


class ModesResult(Timed):
    """The modes probe at one step: the modes followed, the network's strength along each, and what its
    closed-form trajectory is computed from (its start, the loss's curvature c along a mode, the time Σ lr)."""

    singular_values: list[float] = Field(description="of the training data's Σyx, largest first")
    strengths: list[float] = Field(description="u_αᵀ W v_α of the network's end-to-end map W, per mode")
    depth: int
    curvature: float = Field(description="c = ⟨E, ∇²L E⟩ for a unit mode E = u vᵀ (2/outputs for a mean squared error, white inputs)")
    start_step: int = Field(description="the first probe, the trajectories' origin")
    start_strengths: list[float]
    time: float = Field(description="Σ lr over the updates from the first probe to this step")
    whiteness: float = Field(description="‖Σxx − I‖_F / √inputs of the training inputs (0: whitened, as the closed form assumes)")
    formula: str
    full_batch: bool
    examples: int


# --- transformer instabilities ---


class InstabilityResult(Document):
    """The instability probe at one step: where its numbers were read, and what it could not read (and why)."""

    attention: list[str] = Field(
        description="the attention sites read (module names; sdpa.<n>: the n-th scaled_dot_product_attention call)"
    )
    attention_source: Literal["step", "probe batch"] | None = Field(description="the step's own forward, or the fixed probe batch")
    output_source: Literal["step", "probe batch"] | None = None
    groups: list[str]
    eps: float | None = Field(None, description="the optimizer's ε (Adam-like optimizers)")
    onehot: float
    skipped: list[str] = Field([], description="what was not measured, and why")


# --- loss landscapes (probe and checkpoint analyses) ---


class PathOnPlane(Document):
    steps: list[int]
    x: list[float]
    y: list[float]


class Endpoint(Document):
    job: int | None
    step: int


class RepresentationsComparison(Timed):
    """The representations analysis: the CKA of every layer of one checkpoint (rows) with every layer of another
    (columns), on the same sample of the first one's training set."""

    start: Endpoint
    end: Endpoint
    layers: list[str]
    to_layers: list[str]
    features: list[int]
    to_features: list[int]
    examples: int
    estimator: str
    matrix: list[list[float | None]]
    analysis_id: int | None = None


class LandscapeResult(Timed):
    """A surface (`dims` 2: loss[i][j] = L(θ + xs[i]·d1 + ys[j]·d2)) or a curve (`dims` 1: loss[i]); a partial one
    while it is computed, with gaps (null) where points are still to come."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)
    plane: Literal["random", "hessian", "pca", "interpolation"]
    dims: Literal[1, 2]
    resolution: int
    span: float | None
    span_y: float | None = None
    xs: list[float]
    ys: list[float] | None
    loss: list[Any] = Field(description="loss[i][j] (a list for a curve); null where not (yet) finite")
    accuracy: list[Any] | None
    points_done: int
    points_total: int
    points_per_s: float | None
    evaluated: list[list[int]] | None = None
    partial: bool
    examples: int
    batch_norm: Literal["eval", "recompute"]
    indexing: str
    seed: int | None = None
    normalization: str | None = None
    include_bias_bn: bool | None = None
    orthogonalize: bool | None = None
    adaptive: bool | None = None
    eigenvalues: list[float] | None = None
    explained_variance_ratio: list[float] | None = None
    path: PathOnPlane | None = None
    from_: Endpoint | None = Field(None, alias="from")
    to: Endpoint | None = None
    batch_size: int | None = None
    centre_loss: float | None = None
    end_loss: float | None = None
    chunks: int | None = None
    analysis_id: int | None = None


RESULTS: dict[str, type[Document]] = {
    "summary": RunFacts,
    "resume": Resume,
    "outage": Outage,
    "hessian": HessianResult,
    "gradstats": GradStatsDetails,
    "signals": SignalsPair,
    "landscape": LandscapeResult,
    "collapse": CollapseResult,
    "representations": RepresentationsResult,
    "kernel": KernelResult,
    "modes": ModesResult,
    "instability": InstabilityResult,
}
