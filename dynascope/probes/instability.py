"""The instability probe (dynascope.analysis.instability): at a due step, the attention logits of each layer and
the output's log Z from the step's own forward (hooks, read under no_grad), the gradient's RMS from its
backward and the update's RMS and Adam's ε share from its optimizer step; where the step's forward is not seen
(a loop whose model is not the one called), the same on a fixed probe batch in eval mode. Every step it watches
the loss for the start of a spike."""

import statistics
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from dynascope.analysis import instability as ins
from dynascope.analysis.hvp import module_mode
from dynascope.hookpoints import AttentionLogits
from dynascope.probes.base import Batch, Calls, Output, Probe, Run
from dynascope.results import InstabilityResult
from dynascope.settings import InstabilityProbe

SAMPLE_SEED = 13  # the probe batch's rows: run seed + this
NO_ATTENTION = "attention: the model has no attention the probe can read (nn.MultiheadAttention, F.scaled_dot_product_attention, dynascope.AttentionLogits)"
NOT_CLASSES = "log Z: the outputs are not class scores (a regression)"


def _stacks(model: nn.Module) -> set[str]:
    """Modules that are a stack of like layers (a Sequential or ModuleList of one class): their index is a layer's."""
    return {
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Sequential, nn.ModuleList)) and len(module) > 1 and len({type(m) for m in module}) == 1
    }


def group_of(name: str, stacks: set[str]) -> str:
    """A parameter's kind: its module's name, with the index into a stack of like layers as N (blocks.N.attn.qkv)."""
    parts = name.split(".")[:-1] or name.split(".")
    return ".".join("N" if part.isdigit() and ".".join(parts[:i]) in stacks else part for i, part in enumerate(parts))


def parameter_groups(model: nn.Module, by: str, optimizer: torch.optim.Optimizer | None) -> dict[str, list[Tensor]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if by == "optimizer" and optimizer is not None:
        ids = {id(p): i for i, group in enumerate(optimizer.param_groups) for p in group["params"]}
        keys = [f"group{ids.get(id(p), 'other')}" for _, p in named]
    elif by == "tensor":
        keys = [n for n, _ in named]
    else:
        stacks = _stacks(model)
        keys = [group_of(n, stacks) if by == "kind" else "all" for n, _ in named]
    groups: dict[str, list[Tensor]] = {}
    for key, (_, p) in zip(keys, named, strict=True):
        groups.setdefault(key, []).append(p)
    return groups


class _Calls(TorchFunctionMode):
    """Reads each F.scaled_dot_product_attention call (outside an nn.MultiheadAttention, read on its own).

    Ended by `stop()` at the end of the model's forward: a mode still on the stack when the backward begins would
    be out of it (torch pops a mode while its handler runs `Tensor.backward`) when a loop's capture ends inside
    that backward."""

    def __init__(self, seen: "Seen") -> None:
        super().__init__()
        self.seen, self.active = seen, False

    def start(self) -> None:
        self.__enter__()
        self.active = True

    def stop(self) -> None:
        if self.active:
            self.active = False
            self.__exit__(None, None, None)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and not self.seen.inside_mha:
            logits = ins.sdpa_logits(**ins.sdpa_arguments(args, kwargs), examples=self.seen.examples)
            self.seen.add(f"sdpa.{self.seen.sdpa_calls}", logits)
            self.seen.sdpa_calls += 1
        return func(*args, **kwargs)


class Seen:
    """What the hooks read during one forward pass."""

    def __init__(self, examples: int | None = None) -> None:
        self.examples = examples  # of the batch, whose attention is read
        self.attention: dict[str, ins.AttentionStats] = {}
        self.outputs: Tensor | None = None
        self.sdpa_calls = 0
        self.inside_mha = 0

    def add(self, site: str, logits: Tensor) -> None:
        stats = ins.attention_stats(logits, self.examples)
        self.attention[site] = self.attention[site] + stats if site in self.attention else stats


def _outputs(output: Any) -> Tensor | None:
    found = output if isinstance(output, Tensor) else getattr(output, "logits", None)
    return found if isinstance(found, Tensor) and found.is_floating_point() else None


def attention_sites(model: nn.Module) -> dict[nn.Module, str]:
    """The model's hook points and nn.MultiheadAttention modules, by their names (a hook point's, less `.logits`)."""
    return {m: n.removesuffix(".logits") or n for n, m in model.named_modules() if isinstance(m, (AttentionLogits, nn.MultiheadAttention))}


@contextmanager
def reading(model: nn.Module, sites: dict[nn.Module, str], seen: Seen, sdpa: bool) -> Iterator[None]:
    """Hooks that read a forward pass of `model` into `seen`: its attention `sites`, its scaled_dot_product_attention
    calls (`sdpa`) and its outputs."""

    def mha_in(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.inside_mha += 1
        given = dict(zip(("query", "key", "value", "key_padding_mask"), args, strict=False)) | kwargs
        masks = {k: given.get(k) for k in ("key_padding_mask", "attn_mask")}
        logits = ins.mha_logits(module, given["query"], given["key"], **masks, examples=seen.examples)  # type: ignore[arg-type]
        seen.add(sites[module], logits)

    def mha_out(module: nn.Module, args: tuple, output: Any) -> None:
        seen.inside_mha -= 1

    calls = _Calls(seen)

    def out(module: nn.Module, args: tuple, output: Any) -> None:
        calls.stop()
        if seen.outputs is None:
            seen.outputs = _outputs(output)

    with ExitStack() as stack:
        for module in sites:
            if isinstance(module, AttentionLogits):
                handle = module.register_forward_hook(lambda m, args, _: seen.add(sites[m], args[0]))
                stack.callback(handle.remove)
            elif isinstance(module, nn.MultiheadAttention):
                for handle in (module.register_forward_pre_hook(mha_in, with_kwargs=True), module.register_forward_hook(mha_out)):
                    stack.callback(handle.remove)
        stack.callback(model.register_forward_hook(out).remove)
        if sdpa:
            calls.start()
            stack.callback(calls.stop)
        yield


def _to_host(values: list[Tensor | None]) -> list[float | None]:
    """Scalars moved to the host at once (one synchronization on a GPU)."""
    present = [v for v in values if v is not None]
    numbers = iter(torch.stack([v.double() for v in present]).tolist() if present else [])
    return [next(numbers) if v is not None else None for v in values]


class Instability(Probe):
    name = "instability"
    Settings = InstabilityProbe

    def __init__(self, cfg: InstabilityProbe, run: Run) -> None:
        super().__init__(cfg, run)
        generator = torch.Generator().manual_seed(run.seed + SAMPLE_SEED)
        rows = torch.randperm(len(run.x_train), generator=generator)[: cfg.examples].to(run.x_train.device)
        self.x = run.x_train[rows]
        self.groups = parameter_groups(run.model, cfg.groups, run.optimizer)
        if cfg.groups != "all":
            self.groups["all"] = [p for ps in self.groups.values() for p in ps]
        self.group_of = {id(p): g for g in run.optimizer.param_groups for p in g["params"]} if run.optimizer is not None else {}
        self.sites = attention_sites(run.model)
        self.sdpa, self.unreadable = self._find_sdpa()
        self.losses: deque[float] = deque(maxlen=cfg.spike_window)
        self.spiking = False
        self.active: int | None = None  # the due step whose pass is being read
        self.seen = Seen()
        self.before: list[Tensor] = []
        self.grads: dict[int, float | None] = {}  # each parameter's Σ g² at the due step (by id)
        self.sources: dict[str, str | None] = {"attention": None, "output": None}

    def _find_sdpa(self) -> tuple[bool, str | None]:
        """Whether the model calls scaled_dot_product_attention (one forward of two probe examples, eval mode)."""
        seen = Seen()
        try:
            with torch.no_grad(), module_mode(self.run.model, "eval"), _Calls(seen):
                self.run.model(self.x[:2])
        except Exception as exc:  # (a module whose forward is not the model: read from the step alone)
            return False, f"the model's forward on the probe batch failed ({type(exc).__name__}: {exc})"
        return seen.sdpa_calls > 0, None

    @property
    def has_attention(self) -> bool:
        return bool(self.sites) or self.sdpa

    def before_step(self, step: int, calls: Calls) -> None:
        self.active, self.seen = step, Seen(self.cfg.attention_examples)
        self.sources = {"attention": None, "output": None}
        self.before = [p.detach().clone() for p in self.groups["all"]]

    def finish(self, total: int, calls: Calls) -> None:
        """Nothing: the probe reads a step, and there is none after the last update."""

    def capture(self, step: int) -> Any:
        return reading(self.run.model, self.sites, self.seen, self.sdpa) if step == self.active else nullcontext()

    def after_forward(self, batch: Batch) -> Output | None:
        return self._spike(batch)

    def after_backward(self, batch: Batch) -> None:
        if batch.step != self.active:
            return
        present = [p for p in self.groups["all"] if p.grad is not None]
        norms = torch._foreach_norm([p.grad.detach() for p in present]) if present else []  # (clip_grad_norm_'s: one call)
        self.grads = {id(p): n**2 for p, n in zip(present, _to_host(list(norms)), strict=True)}
        self._read_probe_batch()

    def _read_probe_batch(self) -> None:
        """What the step's own forward did not show (its attention, its outputs), on the fixed probe batch."""
        self.sources = {"attention": "step" if self.seen.attention else None, "output": "step" if self.seen.outputs is not None else None}
        wants_attention = self.has_attention and not self.seen.attention
        wants_output = self.run.n_classes is not None and self.seen.outputs is None
        if not (wants_attention or wants_output) or self.unreadable:
            return
        seen = Seen()
        with torch.no_grad(), module_mode(self.run.model, "eval"), reading(self.run.model, self.sites, seen, self.sdpa):
            self.run.model(self.x)
        if wants_attention and seen.attention:
            self.seen.attention, self.sources["attention"] = seen.attention, "probe batch"
        if wants_output and seen.outputs is not None:
            self.seen.outputs, self.sources["output"] = seen.outputs, "probe batch"

    def after_step(self, batch: Batch) -> Output | None:
        if batch.step != self.active:
            return None
        self.active = None
        metrics: dict[str, float] = {}
        for site, stats in self.seen.attention.items():
            metrics |= {f"instability/attn_{k}/{site}": v for k, v in stats.summary(self.cfg.onehot).items()}
        if self.seen.outputs is not None and self.run.n_classes is not None:
            metrics |= {f"instability/{k}": v for k, v in ins.log_normalizer(self.seen.outputs).items()}
        metrics |= self._updates(batch.lr)
        document = InstabilityResult(
            attention=list(self.seen.attention),
            attention_source=self.sources["attention"],
            output_source=self.sources["output"] if self.run.n_classes is not None else None,
            groups=list(self.groups),
            eps=self._eps(),
            onehot=self.cfg.onehot,
            skipped=self._skipped(),
        )
        self.seen, self.before, self.grads = Seen(), [], {}
        return Output(metrics, [(batch.step, document)])

    def _updates(self, lr: float) -> dict[str, float]:
        """Per group: the gradient's RMS, the update's RMS per unit learning rate (each parameter's own group's lr),
        and the share of coordinates whose √v̂ is below ε."""
        params = self.groups["all"]
        moved = [n**2 for n in _to_host(list(torch._foreach_norm(torch._foreach_sub([p.detach() for p in params], self.before))))]
        below = _to_host([self._below(p) for p in params])
        per = {
            id(p): (self.grads.get(id(p)), m / self._lr(p, lr) ** 2 if self._lr(p, lr) else None, b)
            for p, m, b in zip(params, moved, below, strict=True)
        }
        metrics: dict[str, float] = {}
        for name, members in self.groups.items():
            rows, total = [per[id(p)] for p in members], sum(p.numel() for p in members)
            metrics[f"instability/grad_rms/{name}"] = ins.rms(sum(g for g, _, _ in rows if g is not None), total)
            if all(u is not None for _, u, _ in rows):
                metrics[f"instability/update_rms/{name}"] = ins.rms(sum(u for _, u, _ in rows), total)  # type: ignore[misc]
            counted = [(b, p.numel()) for (_, _, b), p in zip(rows, members, strict=True) if b is not None]
            if counted:
                metrics[f"instability/eps_share/{name}"] = sum(b for b, _ in counted) / sum(n for _, n in counted)
        return metrics

    def _lr(self, param: Tensor, fallback: float) -> float:
        group = self.group_of.get(id(param))
        return float(group["lr"]) if group is not None and group["lr"] else fallback

    def _below(self, param: Tensor) -> Tensor | None:
        group, optimizer = self.group_of.get(id(param)), self.run.optimizer
        return ins.second_moment_below(optimizer.state.get(param, {}), group) if group is not None and optimizer is not None else None

    def _eps(self) -> float | None:
        optimizer = self.run.optimizer
        return float(optimizer.param_groups[0]["eps"]) if optimizer is not None and "eps" in optimizer.param_groups[0] else None

    def _skipped(self) -> list[str]:
        skipped = [] if self.has_attention else [NO_ATTENTION]
        if self.run.n_classes is None:
            skipped.append(NOT_CLASSES)
        if self.unreadable and not self.seen.attention and self.has_attention:
            skipped.append(f"attention: not seen in the step's forward, and {self.unreadable}")
        if self._eps() is None:
            skipped.append("ε share: the optimizer keeps no second moment (not Adam-like)")
        return skipped

    def _spike(self, batch: Batch) -> Output | None:
        """The start of a loss spike: the loss above the median of the previous `spike_window` steps by `spike_factor`."""
        window = self.losses
        median = statistics.median(window) if len(window) == window.maxlen else 0.0
        ratio = batch.loss / median if median > 0 else 0.0
        window.append(batch.loss)
        spiking = ratio > self.cfg.spike_factor
        begins, self.spiking = spiking and not self.spiking, spiking
        return Output({"instability/spike": ratio}) if begins else None
