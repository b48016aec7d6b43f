"""The landscape probe: a loss surface (or curve) around the current weights at its schedule's steps, published
while it is computed."""

import numpy as np

from dynascope.probes.base import Calls, Output, Probe
from dynascope.probes.grids import plan_landscape, run_plan
from dynascope.settings import LandscapeProbe


class Landscape(Probe):
    name = "landscape"
    Settings = LandscapeProbe

    def before_step(self, step: int, calls: Calls) -> Output:
        plan = plan_landscape(self.cfg, self.run)
        result = run_plan(self.run, plan, calls)
        metrics = {"landscape/centre_loss": result.centre_loss}
        values = np.asarray(result.loss, dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size:
            metrics["landscape/max_loss"] = float(finite.max())
        artifacts = {"landscape-directions": plan.direction_tensors()} if self.cfg.save_directions else {}
        return Output(metrics, [(step, result)], artifacts)
