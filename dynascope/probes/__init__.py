"""Probes: analyses a training loop runs on their schedules, each one class in one file, driven by a ProbeSet.

PROBES is the registry (name → class) the runner builds a run's probes from, in this order: it is also the
order in which the hooks of one step run (the Hessian probe publishes its sharpness before the signals probe
reads it)."""

from dynascope.probes.base import Batch, Blackboard, Calls, Output, Probe, ProbeStopped, Recorder, Run
from dynascope.probes.collapse import Collapse
from dynascope.probes.gradstats import GradStats
from dynascope.probes.hessian import HessianTracker
from dynascope.probes.instability import Instability
from dynascope.probes.kernel import Kernel
from dynascope.probes.landscape import Landscape
from dynascope.probes.modes import Modes
from dynascope.probes.representations import Representations
from dynascope.probes.runner import ProbeSet
from dynascope.probes.signals import Signals

PROBES: dict[str, type[Probe]] = {
    probe.name: probe for probe in (HessianTracker, Landscape, GradStats, Signals, Collapse, Representations, Kernel, Modes, Instability)
}

__all__ = ["PROBES", "Batch", "Blackboard", "Calls", "Output", "Probe", "ProbeSet", "ProbeStopped", "Recorder", "Run"]
