"""The probes on a loop the tracker does not own, through hooks: the model's forward, the loss module's forward,
and the optimizer's step (see dynascope.tracker for the order). One `Watched` per run.

Under torch.distributed the probes see the model inside DistributedDataParallel; gradient statistics run on
every rank (they gather the global batch's numbers), the other probes on rank 0 alone, on its probe batch."""

import logging
import sys
from contextlib import ExitStack
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from dynascope.analysis import gradstats
from dynascope.probes import Batch, ProbeSet, ProbeStopped, Run
from dynascope.probes.optimizers import adam_preconditioner, stability_threshold
from dynascope.settings import Probes

log = logging.getLogger("dynascope")
UNKNOWN_TOTAL = 2**62  # a run that did not say how many steps it plans: `end` probes run at finish()


def per_example(loss_fn: nn.Module) -> Any:
    """The loss module's per-example form: the same loss with reduction "none", averaged over all but the first axis."""
    if not isinstance(loss_fn, nn.modules.loss._Loss) or getattr(loss_fn, "reduction", None) != "mean":
        raise ValueError(
            "run.watch: give example_loss=(outputs, targets) -> per-example losses for a loss other than a torch loss with mean reduction"
        )
    each = type(loss_fn)(**{**_init_args(loss_fn), "reduction": "none"})

    def example_loss(out: Tensor, target: Tensor) -> Tensor:
        values = each(out.reshape(-1, out.shape[-1]), target.reshape(-1)) if isinstance(loss_fn, nn.CrossEntropyLoss) else each(out, target)
        return values.reshape(len(target), -1).mean(1)

    return example_loss


def _init_args(loss_fn: nn.Module) -> dict[str, Any]:
    keep = ("weight", "ignore_index", "label_smoothing", "pos_weight", "beta", "delta")
    return {k: getattr(loss_fn, k) for k in keep if hasattr(loss_fn, k) and not k.startswith("_")}


def _register_known_layers() -> None:
    """Layers of libraries the user has imported that gradient statistics have a fast rule for."""
    if "transformers" in sys.modules:
        from transformers.pytorch_utils import Conv1D

        gradstats.register_transposed_linear(Conv1D)


def at_backward_end(fn: Any) -> None:
    """Call `fn` once the backward pass now running has finished: after the callbacks autograd holds so far
    (DistributedDataParallel's, which averages the gradient across ranks, among them), before anything the
    loop does after backward() (clipping, the optimizer's step). Call it from a hook inside that backward."""
    engine = torch.autograd.Variable._execution_engine
    engine.queue_callback(lambda: engine.queue_callback(fn))  # (a callback may queue callbacks: they run last)


class Stepper:
    """The probe runner driven one step at a time by a loop the tracker does not own: `start` (the weights before
    update s; the probes due at s run, then their capture begins), `forward_done`, `backward_done` (the step's
    gradient is whole in `.grad`: at the end of its backward, before any clipping), `after_update`, and `close`
    at the end."""

    def __init__(
        self,
        tracker: Any,
        model: nn.Module,
        loss_fn: Any,
        optimizer: torch.optim.Optimizer,
        probe_batch: tuple[Tensor, Tensor] | None,
        settings: Probes,
        *,
        example_loss: Any = None,
        classes: int | None = None,
        seed: int = 0,
    ) -> None:
        from dynascope.tracker import Follower

        distributed = torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
        if isinstance(tracker, Follower):  # the probes every rank takes part in; the rest are rank 0's
            settings = Probes(gradstats=settings.gradstats)
        chosen = [name for name in Probes.model_fields if getattr(settings, name) is not None]
        if chosen and probe_batch is None:
            raise ValueError(f"watch: the probes {chosen} need probe_batch=(x, y): the fixed examples they compute on")
        x, y = probe_batch if probe_batch is not None else (torch.empty(0), torch.empty(0))
        if classes is None and not y.is_floating_point() and len(y):
            classes = int(y.max()) + 1
        self.tracker, self.optimizer, self.loss_fn = tracker, optimizer, loss_fn
        self.example_loss = example_loss or per_example(loss_fn)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        _register_known_layers()
        run = Run(
            model.module if isinstance(model, DistributedDataParallel) else model,
            lambda out, target: loss_fn(out, target),
            self.example_loss,
            x,
            y,
            classes,
            seed,
            tracker.request.facts.total_steps or UNKNOWN_TOTAL,
            threshold=lambda: stability_threshold(optimizer),
            preconditioner=lambda: adam_preconditioner(optimizer, params),
            adaptive="betas" in optimizer.param_groups[0],
            optimizer=optimizer,
            distributed=distributed,
        )
        self.probes = ProbeSet.build(settings, run, Recording(tracker))
        self.batch_x: Tensor | None = None
        self.batch: Batch | None = None
        self.capture: ExitStack | None = None
        self.stopped = False
        self.inside = False  # in a probe's hook: its own forward passes are not the loop's

    def _safely(self, hook: Any) -> None:
        """A probe stopped by a cancel stops the probes, not the user's loop (which reads run.should_stop())."""
        if self.stopped:
            return
        self.inside = True
        try:
            hook()
        except ProbeStopped:
            self.stopped = True
            log.warning("dynascope: the run was cancelled; its probes stop (the loop can check run.should_stop())")
        finally:
            self.inside = False

    @property
    def started(self) -> bool:
        return self.capture is not None

    def start(self, x: Any) -> None:
        step = self.tracker.step
        self._safely(lambda: self.probes.before_step(step))
        self.batch_x = x
        self.tracker._logged_step = step
        self.capture = self.probes.capture(step) if not self.stopped else ExitStack()
        self.capture.__enter__()

    def forward_done(self, target: Tensor, loss: float) -> None:
        """The step's targets and mean loss. (Each example's loss is read only when the batch is the whole training
        set, which a tracked run's probes never assume: none is computed.)"""
        losses = target.new_empty(0, dtype=torch.float32)
        lr = self.optimizer.param_groups[0]["lr"]
        x = self.batch_x if isinstance(self.batch_x, Tensor) else target.new_empty(0)
        batch = self.batch = Batch(self.tracker.step, x, target, torch.arange(len(target)), losses, loss, lr)
        self._safely(lambda: self.probes.after_forward(batch))

    def backward_done(self) -> None:
        if self.capture is None:  # once a step (a second backward of the same step is not the step's)
            return
        self._close_capture()  # first: the probes' own forward passes are not the step's
        if (batch := self.batch) is not None:
            self._safely(lambda: self.probes.after_backward(batch))

    def on_backward_end(self, tensor: Tensor) -> None:
        """`backward_done` at the end of the backward pass that goes through `tensor` (the step's loss or outputs)."""
        if tensor.requires_grad:
            tensor.register_hook(lambda _: at_backward_end(self.backward_done))

    def after_update(self) -> None:
        self.backward_done()  # (an update without a backward of its own)
        if (batch := self.batch) is not None:
            self._safely(lambda: self.probes.after_step(batch))
        self.batch, self.batch_x = None, None
        self.tracker.step += 1

    def _close_capture(self) -> None:
        if self.capture is not None:
            self.capture.__exit__(None, None, None)
            self.capture = None

    def close(self) -> None:
        """The probes due at the end (after the last update)."""
        self._close_capture()
        self.probes.total = self.tracker.step
        self._safely(self.probes.finish)


class Watched(Stepper):
    """A plain loop, read through hooks on its model, loss module and optimizer (see dynascope.tracker)."""

    def __init__(self, tracker: Any, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, *args: Any, **kw: Any) -> None:
        if not isinstance(loss_fn, nn.Module):
            raise ValueError("run.watch: loss_fn must be an nn.Module (e.g. nn.CrossEntropyLoss()): its forward is where the batch is read")
        super().__init__(tracker, model, loss_fn, optimizer, *args, **kw)
        if not self.probes.probes:  # nothing to run: only the steps are counted (the loop's time stays its own)
            self.handles = [model.register_forward_pre_hook(self._count), optimizer.register_step_post_hook(self._counted)]
            return
        self.handles = [
            model.register_forward_pre_hook(self._forward),
            loss_fn.register_forward_hook(self._loss),
            optimizer.register_step_post_hook(lambda *_: self.after_update()),
        ]

    def _count(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if module.training and torch.is_grad_enabled():
            self.tracker._logged_step = self.tracker.step

    def _counted(self, *_: Any) -> None:
        self.tracker.step += 1

    def _forward(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.inside or self.started or not torch.is_grad_enabled() or not module.training:
            return  # an evaluation pass, or a forward of the same step (the first one is the step's)
        self.start(args[0] if args else None)

    def _loss(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        if self.inside or not self.started or self.batch is not None or len(args) < 2:
            return
        self.forward_done(args[1], float(output.detach()))
        self.on_backward_end(output)

    def close(self) -> None:
        super().close()
        for handle in self.handles:
            handle.remove()


class Recording:
    """The probe runner's recorder for a tracked run: everything goes to the tracker's queue."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.tracker.log(metrics, step=step)

    def progress(self, step: int, total: int, stage: str) -> None:
        self.tracker._stage = stage

    def should_stop(self) -> bool:
        return self.tracker.cancelled.is_set()  # (not should_stop(): a probe on rank 0 alone takes part in no collective)

    def save_tensors(self, kind: str, step: int, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
        cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        self.tracker.artifact(kind, step, safetensors_bytes(cpu, metadata=metadata))

    def result(self, kind: str, step: int, payload: dict[str, Any]) -> None:
        self.tracker.result(kind, step, payload)
