"""Training-loop overhead: our loop (with its real database recorder) against a bare PyTorch loop.

Same model (MLP 128-128 on digits), data, batch size, seed and thread count; steps per second, best of
`repeats`. The ratio is ours / bare (1.0 = no overhead).
"""

import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from backend.spec import JobSpec
from worker.training import data, models
from worker.training.loop import train

STEPS = 3000


def bare_loop(spec: JobSpec) -> float:
    torch.manual_seed(spec.train.seed)
    split = data.load(spec.data, spec.train.seed)
    model = models.build(spec.model, split.input_shape, 10)
    opt = torch.optim.SGD(model.parameters(), lr=spec.optimizer.lr)
    gen = torch.Generator().manual_seed(spec.train.seed)
    n, b = len(split.y_train), spec.train.batch_size
    start = time.perf_counter()
    for _ in range(spec.train.steps):
        idx = torch.randint(0, n, (b,), generator=gen)
        loss = nn.functional.cross_entropy(model(split.x_train[idx]), split.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return spec.train.steps / (time.perf_counter() - start)


def our_loop(spec: JobSpec) -> float:
    import os

    from backend.config import get_settings
    from backend.db import get_engine, get_sessionmaker, session_scope
    from backend.migrate import upgrade_head
    from backend.models import Job, JobStatus
    from backend.services.artifacts import LocalArtifactStore
    from worker.recorder import DbRecorder

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
    return spec.train.steps / elapsed


def run(repeats: int = 3) -> list[dict]:
    torch.set_num_threads(1)
    spec = JobSpec.model_validate(
        {
            "name": "bench",
            "model": {"kind": "mlp", "widths": [128, 128]},
            "data": {"kind": "digits"},
            "optimizer": {"kind": "sgd", "lr": 0.1},
            "train": {"steps": STEPS, "batch_size": 128, "seed": 0, "eval_every": 50},
        }
    )
    bare = max(bare_loop(spec) for _ in range(repeats))
    ours = max(our_loop(spec) for _ in range(repeats))
    return [
        {"benchmark": "train_loop", "case": "MLP 128-128 on digits, batch 128, no probes",
         "ours": f"{ours:.0f} steps/s", "anchor": f"{bare:.0f} steps/s (bare PyTorch loop)",
         "ratio": f"{ours / bare:.3f}"}  # fmt: skip
    ]
