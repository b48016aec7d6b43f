"""Training-loop overhead: our loop (with its real database recorder on SQLite) against a bare PyTorch loop.

Same model, data, batch size, batch order (a permutation per epoch), seed and thread count, no probes;
steps per second, best of `repeats` runs of each, alternated. Our time includes the set-up a job pays once
(data, model, the final evaluation and checkpoint); runs are long enough to show the per-step cost. Validation runs only at the end of our loop (the bare loop has none).
Ratio = ours / bare: 1.0 is no overhead.
"""

import os
import tempfile
import time
from pathlib import Path

import torch

from backend.spec import JobSpec, TransformerModel
from worker.training import data, models
from worker.training.optim import make_loss

CASES = {
    "MLP 128-128 on digits, batch 128": ({"model": {"kind": "mlp", "widths": [128, 128]}, "data": {"kind": "digits"}}, 10_000),
    "CNN 32-32 on digits, batch 128": ({"model": {"kind": "cnn", "channels": [32, 32]}, "data": {"kind": "digits"}}, 1000),
    "transformer 2x64 (context 64) on pydoc text, batch 32": (
        {
            "model": {"kind": "transformer", "layers": 2, "heads": 4, "width": 64, "context": 64},
            "data": {"kind": "text", "max_chars": 100_000},
        },
        300,
    ),
}


def _spec(case: dict, steps: int) -> JobSpec:
    batch = 32 if case["model"]["kind"] == "transformer" else 128
    return JobSpec.model_validate(
        {
            "name": "bench",
            **case,
            "optimizer": {"kind": "sgd", "lr": 0.05},
            "train": {"steps": steps, "batch_size": batch, "seed": 0, "eval_every": steps, "checkpoint_every": None},
        }
    )


def bare_loop(spec: JobSpec) -> float:
    torch.manual_seed(spec.train.seed)
    context = spec.model.context if isinstance(spec.model, TransformerModel) else None
    split = data.load(spec.data, spec.train.seed, context)
    model = models.build(spec.model, split)
    loss_fn = make_loss("cross_entropy", split.n_classes)
    opt = torch.optim.SGD(model.parameters(), lr=spec.optimizer.lr)
    gen = torch.Generator().manual_seed(spec.train.seed)
    n, b = len(split.y_train), min(spec.train.batch_size, len(split.y_train))
    order, cursor = torch.randperm(n, generator=gen), 0
    start = time.perf_counter()
    for _ in range(spec.train.steps):
        if cursor + b > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor : cursor + b]
        cursor += b
        loss = loss_fn(model(split.x_train[idx]), split.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return spec.train.steps / (time.perf_counter() - start)


def our_loop(spec: JobSpec) -> float:
    return spec.train.steps / job_seconds(spec)


def job_seconds(spec: JobSpec) -> float:
    """A server job's whole run (set-up, training, final evaluation) with its real recorder on SQLite."""
    from backend.config import get_settings
    from backend.db import get_engine, get_sessionmaker, session_scope
    from backend.migrate import upgrade_head
    from backend.models import Job, JobStatus
    from backend.services.artifacts import LocalArtifactStore
    from worker.recorder import DbRecorder
    from worker.training.loop import train

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DYNASCOPE_DATABASE_URL"] = f"sqlite:///{Path(tmp) / 'bench.db'}"
        for cached in (get_settings, get_engine, get_sessionmaker):
            cached.cache_clear()
        upgrade_head()
        with session_scope() as session:
            job = Job(name="bench", spec=spec.model_dump(mode="json"), status=JobStatus.running.value, attempts=1)
            session.add(job)
            session.flush()
            job_id = job.id
        recorder = DbRecorder(job_id, 1, LocalArtifactStore(Path(tmp) / "artifacts"), heartbeat_interval=2.0)
        start = time.perf_counter()
        train(spec, recorder, torch.device("cpu"))
        recorder.close()
        elapsed = time.perf_counter() - start
        get_engine().dispose()
    return elapsed


def run(repeats: int = 5) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for name, (case, steps) in CASES.items():
        spec = _spec(case, steps)
        # Alternated, best of each: a shared machine's slow spells fall on both sides alike.
        bare, ours = 0.0, 0.0
        for _ in range(repeats):
            bare, ours = max(bare, bare_loop(spec)), max(ours, our_loop(spec))
        rows.append(
            {
                "benchmark": "train_loop",
                "case": f"{name}, no probes",
                "ours": f"{ours:.1f} steps/s",
                "anchor": f"{bare:.1f} steps/s (bare PyTorch loop)",
                "ratio": f"{ours / bare:.3f}",
            }
        )
    return rows
