"""The job spec: the contract between the API, the dashboard and the worker.

Every model is strict (unknown keys are errors) so that a typo never silently trains the wrong thing.
"""

from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, Discriminator, Field, JsonValue, Tag, ValidationError, model_validator

from dynascope.entrypoints import PATTERN as ENTRYPOINT_PATTERN
from dynascope.settings import (
    Flag,
    HessianSettings,
    InterpolationSettings,
    LandscapeSettings,
    LayerName,
    Probes,
    RepresentationsSettings,
    StrictModel,
    TrajectorySettings,
)


class MLPModel(StrictModel):
    kind: Literal["mlp"]
    widths: Annotated[list[Annotated[int, Field(gt=0, le=65536)]], Field(min_length=1, max_length=64)] = [
        128,
        128,
    ]
    activation: Literal["relu", "tanh", "gelu"] = "relu"
    init_scale: float = Field(
        1.0, gt=0.0, le=100.0, description="multiplies every initial weight and bias (PyTorch's default init): large is lazy, small is rich"
    )
    output_scale: float = Field(
        1.0, gt=0.0, le=1e4, description="α, multiplying the network's output (Chizat & Bach's lazy training: α → ∞ with lr/α²)"
    )


class CNNModel(StrictModel):
    """3×3 convolutions (each followed by ReLU and 2×2 max-pooling while the image allows), then a linear head."""

    kind: Literal["cnn"]
    channels: Annotated[list[Annotated[int, Field(gt=0, le=4096)]], Field(min_length=1, max_length=16)] = [32, 32]
    batch_norm: Flag = False
    init_scale: float = Field(
        1.0, gt=0.0, le=100.0, description="multiplies every initial weight and bias (PyTorch's default init): large is lazy, small is rich"
    )
    output_scale: float = Field(
        1.0, gt=0.0, le=1e4, description="α, multiplying the network's output (Chizat & Bach's lazy training: α → ∞ with lr/α²)"
    )


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
    qk_layernorm: Flag = Field(False, description="LayerNorm on queries and keys (a mitigation of logit growth)")
    z_loss: float = Field(0.0, ge=0.0, description="weight of the output z-loss, mean of log² Σ exp(logits)")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "TransformerModel":
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        return self


class LinearModel(StrictModel):
    """A deep linear network y = W_D ⋯ W_1 x, bias-free (Saxe et al. 2014): `depth` weight matrices, hidden layers
    `width` wide."""

    kind: Literal["linear"]
    depth: int = Field(2, ge=1, le=16, description="weight matrices (1: linear regression)")
    width: int = Field(16, gt=0, le=4096, description="units of each hidden layer")
    init: Literal["balanced", "random"] = Field(
        "balanced",
        description="balanced: Saxe's decoupled initial conditions (every layer's nonzero singular values equal `scale`, "
        "chained so that the product is scale^depth along each mode of the training data's input–output correlation); "
        "random: entries N(0, scale²/fan_in)",
    )
    scale: float = Field(0.1, gt=0.0, le=10.0, description="each layer's singular values (balanced) or their typical size (random)")


EntryPoint = Annotated[
    str,
    Field(
        max_length=200,
        pattern=ENTRYPOINT_PATTERN,
        description="module:function of an installed package, under a module prefix the operator allows (DYNASCOPE_ENTRYPOINTS)",
    ),
]
Kwargs = Annotated[dict[str, JsonValue], Field(description="keyword arguments the function is called with (JSON values)")]


class PythonModel(StrictModel):
    """A model from the team's own installed package: `function(description, **kwargs)` returns an nn.Module, given
    a dynascope.entrypoints.DataDescription (input shape, outputs, classes, modality, vocabulary). The worker
    imports it and counts its parameters."""

    kind: Literal["python"]
    entrypoint: EntryPoint
    kwargs: Kwargs = {}


Model = Annotated[MLPModel | CNNModel | ResNetModel | TransformerModel | LinearModel | PythonModel, Field(discriminator="kind")]


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


class LinearTeacherData(GeneratedData):
    """Regression on a linear teacher y = T x + noise, T = U diag(singular_values) Vᵀ with random orthonormal U and V,
    and inputs whitened on the training split (its Σxx is the identity): the setting of Saxe et al.'s exact
    solutions."""

    kind: Literal["linear_teacher"]
    dim: int = Field(8, gt=0, le=4096, description="inputs")
    outputs: int = Field(8, gt=0, le=4096)
    singular_values: list[Annotated[float, Field(gt=0.0, le=1e3)]] = Field(
        [3.0, 2.0, 1.0, 0.5], min_length=1, max_length=4096, description="the teacher's, one per mode (at most min(dim, outputs))"
    )
    noise: float = Field(0.0, ge=0.0, description="standard deviation of Gaussian noise on the targets")

    @model_validator(mode="after")
    def _modes_fit(self) -> "LinearTeacherData":
        if len(self.singular_values) > min(self.dim, self.outputs):
            raise ValueError(
                f"{len(self.singular_values)} singular values, but a {self.outputs} × {self.dim} teacher has at most {min(self.dim, self.outputs)}"
            )
        if self.examples * (1 - self.val_fraction) < self.dim + 1:
            raise ValueError(f"whitening {self.dim} inputs needs more than {self.dim} training examples")
        return self


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


class PythonData(StrictModel):
    """Data from the team's own installed package: `function(seed=…, **kwargs)` returns the training and validation
    sets — (x_train, y_train, x_val, y_val) tensors or arrays, a (train, validation) pair of torch Datasets of
    (x, y) items, or a dynascope.entrypoints.Arrays. Integer targets are classes (a sequence of them: next-token
    text), float targets a regression."""

    kind: Literal["python"]
    entrypoint: EntryPoint
    kwargs: Kwargs = {}


def _inside(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    if path.startswith(("/", "~")) or ":" in parts[0] or ".." in parts:
        raise ValueError("must be a path relative to the worker's data root (DYNASCOPE_DATA_DIR), without .. or a leading /")
    return path


DataPath = Annotated[
    str,
    Field(min_length=1, max_length=500, description="relative to the worker's data root (DYNASCOPE_DATA_DIR)"),
    AfterValidator(_inside),
]


class DiskData(StrictModel):
    """Data on the worker's disk, under the root the operator sets (DYNASCOPE_DATA_DIR); the validation set is
    `val_fraction` of it, drawn with the run's seed (stratified by class)."""

    path: DataPath
    val_fraction: float = Field(0.2, gt=0.0, lt=0.9)


class ImageFolderData(DiskData):
    """One sub-folder per class (sorted names are classes 0, 1, …) of PNG or JPEG images, read with Pillow, resized
    to `size` and scaled to [0, 1] (then standardized per channel with the training split's mean and deviation,
    if `normalize`)."""

    kind: Literal["image_folder"]
    size: tuple[Annotated[int, Field(gt=0, le=1024)], Annotated[int, Field(gt=0, le=1024)]] = Field((32, 32), description="height, width")
    grayscale: Flag = False
    normalize: Flag = True


class NpyData(DiskData):
    """A folder with X.npy (examples, …) and y.npy (integer classes or float targets), memory-mapped and never
    unpickled: float32 inputs are read batch by batch from the file, never all at once."""

    kind: Literal["npy"]


class IdxData(DiskData):
    """MNIST or Fashion-MNIST in their IDX files, as torchvision keeps them (train-images-idx3-ubyte,
    train-labels-idx1-ubyte, plain or .gz, in the folder or its <name>/raw); CIFAR-10 in its binary version
    (cifar-10-batches-bin/data_batch_1.bin … 5). Read without torchvision and without unpickling; the training
    files only (the validation set is a share of them)."""

    kind: Literal["mnist", "fashion_mnist", "cifar10"]
    max_examples: int | None = Field(None, gt=0, description="the first this many (null: all)")


class TextFileData(DiskData):
    """A UTF-8 text file for the character-level language model; the last val_fraction of it is held out."""

    kind: Literal["text_file"]
    max_chars: int = Field(1_000_000, ge=1000, le=1_000_000_000)
    val_fraction: float = Field(0.1, gt=0.0, lt=0.9)


class UploadedData(StrictModel):
    """A dataset uploaded through POST /api/v1/datasets, by its id."""

    kind: Literal["upload"]
    dataset: str = Field(pattern=r"^[0-9a-f]{32}$")
    val_fraction: float = Field(0.2, gt=0.0, lt=0.9)


Data = Annotated[
    DigitsData
    | TabularData
    | GaussianMixtureData
    | TeacherStudentData
    | LinearTeacherData
    | OpposingFeaturesData
    | TextData
    | UploadedData
    | PythonData
    | ImageFolderData
    | NpyData
    | IdxData
    | TextFileData,
    Field(discriminator="kind"),
]
IMAGE_DATA = {"digits", "opposing_features", "image_folder", "mnist", "fashion_mnist", "cifar10"}
TEXT_DATA = {"text", "text_file"}
REGRESSION_DATA = {"teacher_student", "linear_teacher"}


class SGDOptimizer(StrictModel):
    kind: Literal["sgd"]
    lr: float = Field(gt=0.0, le=1e3)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: Flag = False
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
    eps: float = Field(
        1e-8, gt=0.0, description="added to √v̂ in the update's denominator (a gradient whose RMS is below it gets a smaller update)"
    )
    weight_decay: float = Field(0.0, ge=0.0)
    independent_weight_decay: Flag = Field(
        False,
        description="adamw: each step shrinks the weights by weight_decay × the schedule's factor, independent of the peak lr "
        "(Wortsman et al. 2023; torch's AdamW with weight_decay / lr), instead of by lr × weight_decay",
    )

    @model_validator(mode="after")
    def _independent_is_decoupled(self) -> "AdamOptimizer":
        if self.independent_weight_decay and self.kind != "adamw":
            raise ValueError("independent_weight_decay needs kind adamw (adam's weight decay is an L2 term in the gradient)")
        return self


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
    loss: Literal["cross_entropy", "mse"] = Field("cross_entropy", description="mse on classes: mean squared error against one-hot targets")
    schedule: LRSchedule = LRSchedule()
    grad_clip: float | None = Field(None, gt=0.0, description="clip the global gradient norm (null: off)")
    checkpoint_every: int | None = Field(1000, gt=0, description="keep the whole training state every N steps: a lost worker resumes there")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast on a GPU (fp32 on a CPU)")
    divergence_factor: float | None = Field(
        1000.0, gt=1.0, description="End as diverged when the loss exceeds this multiple of the first loss (null: off)."
    )


class HessianAnalysis(HessianSettings):
    """The Hessian's spectrum at a checkpoint a job kept (its last one by default), run on demand."""

    kind: Literal["hessian"] = "hessian"
    step: int | None = Field(None, ge=0, description="the checkpoint's step (null: the latest)")


class LandscapeAnalysis(LandscapeSettings):
    """A loss landscape around a checkpoint a job kept (its last one by default), run on demand."""

    kind: Literal["landscape"] = "landscape"
    step: int | None = Field(None, ge=0, description="the checkpoint's step (null: the latest)")


class TrajectoryAnalysis(TrajectorySettings):
    """The training path on the plane of its first two principal components (PCA of checkpoint − final weights
    over the checkpoints the job kept up to `step`), with the loss surface of that plane under it."""

    kind: Literal["trajectory"] = "trajectory"
    step: int | None = Field(None, ge=0, description="the path's last checkpoint, the plane's centre (null: the latest)")


class InterpolationAnalysis(InterpolationSettings):
    """Loss and accuracy along the straight line θ(α) = (1 − α)·θ_from + α·θ_to between two checkpoints of this
    job, or from one of its checkpoints to another job's latest (same model). BatchNorm statistics are
    interpolated too; α = 0 and α = 1 are always points of the line."""

    kind: Literal["interpolation"] = "interpolation"
    step: int | None = Field(None, ge=0, description="θ_from: this job's checkpoint (null: the first kept; with to_job, the latest)")
    to_step: int | None = Field(None, ge=0, description="θ_to: this job's checkpoint (null: the latest)")
    to_job: int | None = Field(None, ge=1, le=2**31 - 1, description="θ_to: that job's latest checkpoint instead")

    @model_validator(mode="after")
    def _one_other_end(self) -> "InterpolationAnalysis":
        if self.to_job is not None and self.to_step is not None:
            raise ValueError("give to_step (this job) or to_job (another job's latest), not both")
        return self


class RepresentationsAnalysis(RepresentationsSettings):
    """Linear CKA between every layer of this job's checkpoint and every layer of another checkpoint (this job's
    at to_step, or another job's latest: any model that takes the same inputs), on the same fixed stratified
    sample of this job's training set."""

    kind: Literal["representations"] = "representations"
    step: int | None = Field(None, ge=0, description="this job's checkpoint (null: the latest)")
    to_step: int | None = Field(None, ge=0, description="the other end: this job's checkpoint (null: the first kept)")
    to_job: int | None = Field(None, ge=1, le=2**31 - 1, description="the other end: that job's latest checkpoint instead")
    to_layers: list[LayerName] | None = Field(None, min_length=1, max_length=32, description="the other model's layers (null: its blocks)")

    @model_validator(mode="after")
    def _one_other_end(self) -> "RepresentationsAnalysis":
        if self.to_job is not None and self.to_step is not None:
            raise ValueError("give to_step (this job) or to_job (another job's latest), not both")
        return self


AnyAnalysis = HessianAnalysis | LandscapeAnalysis | TrajectoryAnalysis | InterpolationAnalysis | RepresentationsAnalysis
ANALYSIS_KINDS: dict[str, type[AnyAnalysis]] = {
    "hessian": HessianAnalysis,
    "landscape": LandscapeAnalysis,
    "trajectory": TrajectoryAnalysis,
    "interpolation": InterpolationAnalysis,
    "representations": RepresentationsAnalysis,
}
"""The kinds of checkpoint analysis, by name; each one's results land under `{kind}_analysis`."""
GRID_RESULTS = ("landscape", *(f"{kind}_analysis" for kind in ("landscape", "trajectory", "interpolation")))
"""The result kinds that are grids of loss values (a probe's landscape, or a grid analysis): exportable as files."""


def _analysis_kind(value: Any) -> str | None:
    return value.get("kind", "hessian") if isinstance(value, dict) else getattr(value, "kind", None)


CheckpointAnalysis = Annotated[
    Union[tuple(Annotated[model, Tag(kind)] for kind, model in ANALYSIS_KINDS.items())],  # noqa: UP007 (a union built from the table)
    Discriminator(_analysis_kind),
]


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
        if data in ("upload", "python", "npy"):
            return self  # checked against the arrays when the job is submitted (backend.shapes) or when it starts
        if model in ("cnn", "resnet") and data not in IMAGE_DATA:
            raise ValueError(f"model.kind {model} needs images (data.kind one of {sorted(IMAGE_DATA)}), not {data}")
        if model != "python" and (model == "transformer") != (data in TEXT_DATA):
            raise ValueError(f"model.kind transformer goes with text data and only with it (here: {model} on {data})")
        if data in REGRESSION_DATA and self.train.loss != "mse":
            raise ValueError(f"data.kind {data} is a regression: set train.loss to mse")
        return self

    @model_validator(mode="after")
    def _modes_need_a_deep_linear_network(self) -> "JobSpec":
        if self.probes.modes is not None and (self.model.kind != "linear" or self.train.loss != "mse"):
            raise ValueError(
                f"probes.modes follows a deep linear network (model.kind linear) on a squared error (train.loss mse), not {self.model.kind} on {self.train.loss}"
            )
        return self

    @model_validator(mode="after")
    def _steps_in_range(self) -> "JobSpec":
        for name in Probes.model_fields:
            probe = getattr(self.probes, name)
            late = [s for s in getattr(probe, "at", []) if isinstance(s, int) and s > self.train.steps]
            if late:
                raise ValueError(f"probes.{name}.at has steps after the last ({self.train.steps}): {late}")
        return self

    @model_validator(mode="after")
    def _small_batch_in_the_batch(self) -> "JobSpec":
        stats = self.probes.gradstats
        if stats is not None and stats.two_batch is not None and stats.two_batch >= self.train.batch_size:
            raise ValueError(
                f"probes.gradstats.two_batch ({stats.two_batch}) must be smaller than train.batch_size ({self.train.batch_size})"
            )
        return self

    @model_validator(mode="after")
    def _collapse_needs_classes(self) -> "JobSpec":
        if self.probes.collapse is not None and self.data.kind in REGRESSION_DATA:
            raise ValueError(f"probes.collapse needs class labels: data.kind {self.data.kind} is a regression")
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
