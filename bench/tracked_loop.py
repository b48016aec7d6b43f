"""The tracker's cost in a user's own loop, and a probe's cost tracked against its cost in a server job.

On a job spec's model, data and batch order (an MLP on the digits), one torch thread:
- a plain PyTorch loop logging its loss every step: bare, and with `dynascope.init(mode="offline")` + `run.watch`
  (no probes) + `run.log`. Offline: what the loop pays is the hooks and the queue (the sender thread writes to
  disk), not the network. Also the bytes kept per 1,000 steps (what would be sent);
- the same loop with gradient statistics every step (`run.watch(..., probes={"gradstats": {"every": 1, "details_every": 100}})`),
  as a multiple of the bare loop and in µs added to a step, beside the server job's: its training loop with the
  same probe against without it, each with its real recorder (SQLite), as the tracked loop pays its sender.

Every variant runs once a round, the lead rotating, over `rounds` rounds; each ratio is the median of the
rounds' ratios (with their range): the machine's slow spells fall on every variant alike.
"""

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import dynascope
from backend.spec import JobSpec
from bench.train_loop import job_seconds
from worker.training.loop import Batches, prepare

WIDTHS = {"MLP 64-128-128-10": [128, 128], "MLP 64-1024-1024-10": [1024, 1024]}
STEPS = {"MLP 64-128-128-10": 2000, "MLP 64-1024-1024-10": 300}
GRADSTATS = {"gradstats": {"every": 1, "details_every": 100}}  # spectra and histogram every 100th step


def _spec(widths: list[int], steps: int, probes: dict | None = None) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "bench",
            "model": {"kind": "mlp", "widths": widths},
            "data": {"kind": "digits"},
            "optimizer": {"kind": "sgd", "lr": 0.05},
            "train": {"steps": steps, "batch_size": 128, "seed": 0, "eval_every": steps, "checkpoint_every": None},
            "probes": probes or {},
        }
    )


def _plain(spec: JobSpec, tracked: Path | None, probes: dict | None) -> float:
    """Seconds per step of a plain loop over the job's model, data and batch order (tracked into `tracked`)."""
    p = prepare(spec, torch.device("cpu"))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(p.model.parameters(), lr=spec.optimizer.lr)
    batches = Batches(len(p.split.y_train), spec.train.batch_size, spec.train.seed)
    x, y = p.split.x_train, p.split.y_train
    run = None
    if tracked is not None:
        run = dynascope.init("bench", mode="offline", dir=tracked, total_steps=spec.train.steps)
        run.watch(p.model, loss_fn, optimizer, probe_batch=(x, y) if probes else None, probes=probes)
    start = time.perf_counter()
    for _ in range(spec.train.steps):
        idx = batches.next()
        loss = loss_fn(p.model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        value = loss.item()
        if run is not None:
            run.log({"train/loss": value})
    elapsed = time.perf_counter() - start
    if run is not None:
        run.finish()
    return elapsed / spec.train.steps


def _job(spec: JobSpec) -> float:
    """Seconds per step of a server job (its loop and its recorder on SQLite; set-up and the final evaluation left
    out by timing a quarter of the run too and taking the difference)."""
    quarter = spec.train.steps // 4
    short = spec.model_copy(update={"train": spec.train.model_copy(update={"steps": quarter, "eval_every": quarter})})
    return (job_seconds(spec) - job_seconds(short)) / (spec.train.steps - quarter)


def _rounds(variants: dict[str, Callable[[int], float]], rounds: int) -> dict[str, list[float]]:
    names, seconds = list(variants), {name: [] for name in variants}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds[name].append(variants[name](r))
    return seconds


def _ratio(num: list[float], den: list[float]) -> tuple[float, float, float]:
    ratios = [a / b for a, b in zip(num, den, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def run(rounds: int = 7) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for name, widths in WIDTHS.items():
        steps = STEPS[name]
        plain_spec, probed_spec = _spec(widths, steps), _spec(widths, steps, GRADSTATS)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            seconds = _rounds(
                {
                    "bare": lambda r: _plain(plain_spec, None, None),
                    "tracked": lambda r: _plain(plain_spec, root / f"tracked-{r}", None),
                    "tracked+gradstats": lambda r: _plain(plain_spec, root / f"gradstats-{r}", GRADSTATS),
                    "job": lambda r: _job(plain_spec),
                    "job+gradstats": lambda r: _job(probed_spec),
                },
                rounds,
            )
            kept = {
                v: sum(p.stat().st_size for p in (root / f"{v}-0").rglob("*.jsonl")) * 1000 / steps / 1024 for v in ("tracked", "gradstats")
            }
        speed = {k: 1 / statistics.median(v) for k, v in seconds.items()}
        no_probe = _ratio(seconds["bare"], seconds["tracked"])  # steps/s tracked ÷ bare
        tracked_cost = _ratio(seconds["tracked+gradstats"], seconds["bare"])
        job_cost = _ratio(seconds["job+gradstats"], seconds["job"])
        added = {  # µs the probe adds to a step, median over the rounds
            side: 1e6 * statistics.median(a - b for a, b in zip(seconds[probed], seconds[base], strict=True))
            for side, probed, base in (("tracked", "tracked+gradstats", "bare"), ("job", "job+gradstats", "job"))
        }
        rows.append(
            {
                "benchmark": "tracked_loop",
                "case": f"{name} on digits, batch 128: your loop tracked offline, no probes, the loss logged every step",
                "ours": f"{speed['tracked']:.0f} steps/s; {kept['tracked']:.1f} KiB kept per 1,000 steps",
                "anchor": f"{speed['bare']:.0f} steps/s (bare loop)",
                "ratio": f"{no_probe[0]:.3f} (rounds {no_probe[1]:.3f}–{no_probe[2]:.3f})",
            }
        )
        rows.append(
            {
                "benchmark": "tracked_loop",
                "case": f"{name}: gradient statistics every step, what they add to a step tracked and in a server job",
                "ours": f"tracked: +{added['tracked']:.0f} µs, {tracked_cost[0]:.2f}× a bare step ({tracked_cost[1]:.2f}–{tracked_cost[2]:.2f}); "
                f"{kept['gradstats']:.0f} KiB kept per 1,000 steps",
                "anchor": f"server job: +{added['job']:.0f} µs, {job_cost[0]:.2f}× its own step ({job_cost[1]:.2f}–{job_cost[2]:.2f})",
                "ratio": f"{added['tracked'] / added['job']:.3f}",
            }
        )
    return rows
