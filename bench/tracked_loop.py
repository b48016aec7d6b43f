"""The tracker's cost in a user's own loop: a plain PyTorch loop logging its loss every step, bare and with
`dynascope.init(mode="offline")` + `run.watch` (no probes) + `run.log`, on the same model, data, batch order and
thread count; steps per second, best of `repeats`, alternated. Offline: what the loop pays is the hooks and the
queue (the sender thread writes to disk, off the loop's thread), not the network. Also the bytes kept per
1,000 steps (what would be sent)."""

import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import dynascope

CASES = {"MLP 128-128 on 64 features, batch 128": 5000, "MLP 1024-1024 on 64 features, batch 128": 1000}


def _setup(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    width = 1024 if "1024" in name else 128
    model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
    return model, torch.randn(2048, 64), torch.randint(0, 10, (2048,))


def _loop(name: str, steps: int, tracked: Path | None) -> float:
    model, x, y = _setup(name)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    run = None
    if tracked is not None:
        run = dynascope.init("bench", mode="offline", dir=tracked)
        run.watch(model, loss_fn, optimizer)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(len(y), (128,), generator=gen)
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        value = loss.item()
        if run is not None:
            run.log({"train/loss": value})
    elapsed = time.perf_counter() - start
    if run is not None:
        run.finish()
    return steps / elapsed


def run(repeats: int = 5) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for name, steps in CASES.items():
        bare = ours = 0.0
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(repeats):
                bare, ours = max(bare, _loop(name, steps, None)), max(ours, _loop(name, steps, Path(tmp) / str(i)))
            kept = sum(p.stat().st_size for p in (Path(tmp) / "0").rglob("*.jsonl"))
        rows.append(
            {
                "benchmark": "tracked_loop",
                "case": f"{name}, no probes, the loss logged every step",
                "ours": f"{ours:.1f} steps/s; {kept * 1000 / steps / 1024:.1f} KiB kept per 1,000 steps",
                "anchor": f"{bare:.1f} steps/s (bare loop)",
                "ratio": f"{ours / bare:.3f}",
            }
        )
    return rows
