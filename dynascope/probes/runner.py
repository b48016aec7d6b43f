"""ProbeSet: the probes of one run, driven by its training loop.

It calls each hook of each probe, times every call into the probe's share of the run (`spent`), and emits what
the hooks return through the recorder, all in one place: a loop only calls the hooks (see base.py for their
order) and subtracts `seconds` from its own clock.
"""

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
import torch
from pydantic import BaseModel

from dynascope.memory import Peak
from dynascope.probes.base import Batch, Calls, Output, Probe, Recorder, Run
from dynascope.results import Timed


def _device(run: Run) -> torch.device:
    return next((p.device for p in run.model.parameters()), torch.device("cpu"))


class ProbeSet:
    def __init__(self, probes: list[Probe], recorder: Recorder, total: int, spent: dict[str, float] | None = None) -> None:
        self.probes, self.recorder, self.total = probes, recorder, total
        self.spent: dict[str, float] = dict(spent or {})  # seconds per probe, over the run (kept across a resume)

    @classmethod
    def build(cls, settings: BaseModel, run: Run, recorder: Recorder, spent: dict[str, float] | None = None) -> "ProbeSet":
        """The probes a `Probes` settings object asks for, in the registry's order."""
        from dynascope.probes import PROBES

        chosen = [PROBES[name](cfg, run) for name in PROBES if (cfg := getattr(settings, name, None)) is not None]
        return cls(chosen, recorder, run.total, spent)

    @property
    def seconds(self) -> float:
        """Every probe's time so far: what a loop's clock of its own work leaves out."""
        return sum(self.spent.values())

    def before_step(self, step: int) -> None:
        for probe in self.probes:
            if probe.due(step):
                self._measure(probe, step, probe.before_step)

    def finish(self) -> None:
        for probe in self.probes:
            self._measure(probe, self.total, lambda step, calls, probe=probe: probe.finish(step, calls))

    def capture(self, step: int) -> ExitStack:
        """Around the step's forward and backward pass (the probes' hooks on the layers)."""
        stack = ExitStack()
        for probe in self.probes:
            stack.enter_context(probe.capture(step))
        return stack

    def after_forward(self, batch: Batch) -> None:
        self._each(batch, lambda probe: probe.after_forward(batch))

    def after_backward(self, batch: Batch) -> None:
        self._each(batch, lambda probe: probe.after_backward(batch))

    def after_step(self, batch: Batch) -> None:
        self._each(batch, lambda probe: probe.after_step(batch))

    def _each(self, batch: Batch, hook: Callable[[Probe], Output | None]) -> None:
        for probe in self.probes:
            with self._clock(probe):
                output = hook(probe)
            if output is not None:
                self._emit(probe, batch.step, output)

    def _measure(self, probe: Probe, step: int, hook: Callable[[int, Calls], Output | None]) -> None:
        """A whole measurement at one step (a spectrum, a surface): with progress, cancellation, partial results,
        its own time and its peak memory, each a series (`time/<probe>_seconds`, `memory/<probe>_bytes`) and part of
        each document."""
        stage = f"probe {probe.name} at step {step}"
        calls = Calls(
            report=lambda text: self.recorder.progress(step, self.total, f"{stage}: {text}"),
            should_stop=self.recorder.should_stop,
            publish=lambda doc: self.recorder.result(probe.name, step, doc.recorded()),
        )
        self.recorder.progress(step, self.total, stage)
        started = time.perf_counter()
        with self._clock(probe), Peak(_device(probe.run)) as peak:
            output = hook(step, calls)
        if output is not None:
            seconds = time.perf_counter() - started
            facts: dict[str, float | int | None] = {"seconds": seconds, "peak_bytes": peak.bytes}
            output.metrics[f"time/{probe.name}_seconds"] = seconds
            if peak.bytes is not None:
                output.metrics[f"memory/{probe.name}_bytes"] = float(peak.bytes)
            output.results = [(at, d.model_copy(update=facts) if isinstance(d, Timed) else d) for at, d in output.results]
            self._emit(probe, step, output)

    @contextmanager
    def _clock(self, probe: Probe) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.spent[probe.name] = self.spent.get(probe.name, 0.0) + time.perf_counter() - started

    def _emit(self, probe: Probe, step: int, output: Output) -> None:
        if output.metrics:
            self.recorder.log(step, output.metrics)
        for at, document in output.results:
            self.recorder.result(probe.name, at, document.recorded())
        for kind, (tensors, metadata) in output.artifacts.items():
            self.recorder.save_tensors(kind, step, tensors, metadata)
