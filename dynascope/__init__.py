"""Dynascope: see how a neural network trains. `dynascope.init(...)` tracks your own training loop (see
dynascope.tracker); `dynascope.Client` talks to the server's REST API; the numerics are in dynascope.analysis
and the probes in dynascope.probes."""

from dynascope.client import ApiError, Client
from dynascope.tracker import Run, init

__all__ = ["ApiError", "AttentionLogits", "Client", "Run", "init"]


def __getattr__(name: str) -> object:
    # A hook point is a torch module: imported when asked for, so that the API (no torch) can import this package.
    if name == "AttentionLogits":
        from dynascope.hookpoints import AttentionLogits

        return AttentionLogits
    raise AttributeError(f"module 'dynascope' has no attribute {name!r}")
