"""Dynascope: see how a neural network trains. `dynascope.init(...)` tracks your own training loop (see
dynascope.tracker); `dynascope.Client` talks to the server's REST API; the numerics are in dynascope.analysis
and the probes in dynascope.probes."""

from dynascope.client import ApiError, Client
from dynascope.hookpoints import AttentionLogits
from dynascope.tracker import Run, init

__all__ = ["ApiError", "AttentionLogits", "Client", "Run", "init"]
