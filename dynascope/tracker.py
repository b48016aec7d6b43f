"""Track your own training loop: `dynascope.init(...)` makes a run on the server (a job like any other, marked
tracked), `run.watch(model, loss_fn, optimizer, probe_batch=..., probes=...)` puts the probes on the loop's own
steps, `run.log({...})` records series, `run.finish()` ends it.

The loop is never slowed by the network: points and results go into a bounded queue that a background thread
sends in batches; what the server does not take (it is down, slow, or the run is offline) is written to the
run's directory and sent later — by the same thread when the server answers again, or by `dynascope sync DIR`.
A second thread beats the run's heartbeat (the server marks a run whose tracker went silent `lost`) and reads
whether someone cancelled it (`run.cancelled`).

How a watched loop's step is read, with hooks (nothing to call but your own code): the model's forward (with
autograd on, in training mode) starts step s: the probes due at s run first, then their capture begins; the loss module's forward gives
the batch's targets and per-example losses; the end of the backward through that loss is where the gradient is
read (whole, before any clipping: autograd says when it ends); the optimizer's step is the update, and the probes
run just after it. Step s's probes see the weights before update s, as in a
server job; `run.log` puts points at the step of the latest training forward.

Under torch.distributed (DDP) one run is one job: rank 0 makes it and sends; the other ranks' `init` gives a
`Follower` that sends nothing and whose probes take part only in what needs every rank (the gradient statistics
of the global batch).
"""

import logging
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import httpx

from dynascope.client import ApiError, Client
from dynascope.settings import Probes
from dynascope.spill import Spill
from dynascope.tracking import Beat, Finish, Point, Points, ResultIn, Resumed, RunCreate, TrackedFacts

log = logging.getLogger("dynascope")
QUEUE_ITEMS = 200_000  # log calls waiting; past this the loop writes straight to disk (the sender fell behind)
SEND_SECONDS = 1.0  # the sender waits this long to fill a batch
BATCH_POINTS = 2000  # points per request (well under the server's body limit with 200-character names)
RETRY_SECONDS = 5.0  # a server that did not answer is tried again after this
BEAT_SECONDS = float(os.environ.get("DYNASCOPE_TRACKER_HEARTBEAT", "5"))  # (the server's tracked_timeout is 90 s)
FINISH_SECONDS = 60.0  # finish() waits this long for the queue to go out, then leaves the rest on disk


def _default_dir() -> Path:
    return Path(os.environ.get("DYNASCOPE_DIR", ".dynascope")) / "runs"


def init(
    name: str,
    config: dict[str, Any] | None = None,
    *,
    url: str | None = None,
    token: str | None = None,
    mode: Literal["online", "offline"] = "online",
    dir: str | Path | None = None,  # noqa: A002 (the name users know from other trackers)
    total_steps: int | None = None,
    framework: Literal["pytorch", "lightning", "transformers"] = "pytorch",
    resume: int | None = None,
) -> "Run":
    """A new run. Online, it is created on the server at once (DYNASCOPE_URL, DYNASCOPE_TOKEN); if the server
    cannot be reached, or offline, it lives in `dir` (default ./.dynascope/runs/<id>) until `dynascope sync`.

    `resume=ID` goes on with the server's run ID instead (online only: the server says where it stopped): its
    steps continue after the last one it recorded, so nothing is recorded twice. Under torch.distributed, ranks
    other than 0 get a `Follower` (one run per job, not one per rank)."""
    request = RunCreate(
        name=name,
        config=config or {},
        facts=TrackedFacts(host=socket.gethostname(), framework=framework, total_steps=total_steps),
    )
    if _rank() > 0:
        return Follower(request)
    if resume is not None and mode != "online":
        raise ValueError("init(resume=...) goes on with a run on the server: it needs mode='online'")
    root = Path(dir) if dir is not None else _default_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    return Run(request, Spill(root), Client(url, token) if mode == "online" else None, resume)


def _rank() -> int:
    """This process's rank in torch.distributed's default group (0 without one). torch is not imported for it."""
    dist = sys.modules.get("torch.distributed")
    return dist.get_rank() if dist is not None and dist.is_available() and dist.is_initialized() else 0


class Run:
    def __init__(self, request: RunCreate, spill: Spill, client: Client | None, resume: int | None = None) -> None:
        self.request, self.spill, self.client = request, spill, client
        self.id: int | None = None
        self.cancelled = threading.Event()
        self.step = 0  # the optimizer steps seen (a watched run), or the log calls (one that is not)
        self._logged_step: int | None = None
        self._names: set[str] = set()
        self._stage = "running"
        # A deque: its append is atomic and ~20× cheaper than queue.Queue's locked put (the loop's time); bounded by _put.
        self._queue: deque[tuple[str, Any]] = deque()
        self._closing = threading.Event()
        self._wake = threading.Event()  # a flush or the end: the sender goes at once instead of at its next round
        self._watched: Any = None  # the probes and hooks, once watch() is called
        self._finished = False
        self._open(resume)
        self._sender = threading.Thread(target=self._send_loop, name="dynascope-sender", daemon=True)
        self._beater = threading.Thread(target=self._beat_loop, name="dynascope-heartbeat", daemon=True)
        self._sender.start()
        self._beater.start()

    def _open(self, resume: int | None) -> None:
        if resume is not None:
            self._resume(resume)
        else:
            self._create()

    def _resume(self, run_id: int) -> None:
        assert self.client is not None
        try:
            resumed: Resumed = self.client.resume_run(run_id)
        except httpx.TransportError as exc:
            raise ConnectionError(f"init(resume={run_id}): {self.client.url} is not reachable ({exc})") from exc
        self.id, self.step = resumed.id, resumed.next_step
        self.spill.save_run(self.request, self.id, self.client.url)

    def _create(self) -> None:
        url = self.client.url if self.client else ""
        if self.client is not None:
            try:
                self.id = self.client.create_run(self.request)["id"]
            except httpx.TransportError as exc:
                log.warning("dynascope: %s is not reachable (%s); the run is kept in %s for `dynascope sync`", url, exc, self.spill.root)
        self.spill.save_run(self.request, self.id, url)

    @property
    def online(self) -> bool:
        return self.client is not None and self.id is not None

    # what the loop calls

    def watch(
        self, model: Any, loss_fn: Any, optimizer: Any, *, probe_batch: Any = None, probes: dict | Probes | None = None, **kw: Any
    ) -> None:
        """Put the probes on this loop's steps (see dynascope.watching for the arguments)."""
        from dynascope.watching import Watched

        settings = probes if isinstance(probes, Probes) else Probes.model_validate(probes or {})
        self._watched = Watched(self, model, loss_fn, optimizer, probe_batch, settings, **kw)

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Series points at `step` (default: the step of the latest training forward, or one per call)."""
        if step is None:
            step = self._logged_step if self._logged_step is not None else self.step
            if self._watched is None:
                self.step += 1
        for name in metrics.keys() - self._names:  # each name checked once, here, where a bad one is the caller's to see
            Point(name=name, step=step, value=None)
            self._names.add(name)
        # One queue item for the call; the points are built by the sender (the loop's time is the loop's)
        self._put(("points", (int(step), {name: float(value) for name, value in metrics.items()})))

    def result(self, kind: str, step: int, data: dict[str, Any]) -> None:
        self._put(("result", ResultIn(kind=kind, step=step, data=data)))

    def artifact(self, kind: str, step: int, data: bytes) -> None:
        """A probe's tensors as safetensors bytes (kept on disk until the server has them)."""
        self._put(("artifact", (kind, step, data)))

    def should_stop(self) -> bool:
        """Someone cancelled the run in the dashboard or with `dynascope cancel`. Under torch.distributed every rank
        calls it at the same point of its loop: the ranks agree (one all-reduce), so they all stop together."""
        return _agree(self.cancelled.is_set())

    def finish(self, status: Literal["succeeded", "failed", "cancelled", "diverged"] = "succeeded", error: str | None = None) -> None:
        """Run the probes due at the end, send what is left (or leave it on disk), and end the run."""
        if self._finished:
            return
        self._finished = True
        if self._watched is not None:
            self._watched.close()
        if status == "succeeded" and self.cancelled.is_set():
            status = "cancelled"
        end = Finish(status=status, error=error)
        self.spill.save_end(end)
        done = threading.Event()
        self._put(("flush", done))
        done.wait(FINISH_SECONDS)
        self._closing.set()
        self._wake.set()
        self._sender.join(FINISH_SECONDS)
        if self.online and not self.spill.pending():
            try:
                self.client.finish(self.id, end)  # type: ignore[union-attr]
                self.spill.mark_finished()
            except (httpx.TransportError, ApiError) as exc:
                log.warning("dynascope: the run's end was not sent (%s)", exc)
        if self.spill.end() is not None:
            log.warning("dynascope: run kept in %s; send it with `dynascope sync %s`", self.spill.root, self.spill.root)
        if self.client is not None:
            self.client.close()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if kind is None:
            self.finish()
        else:
            self.finish("cancelled" if issubclass(kind, KeyboardInterrupt) else "failed", f"{kind.__name__}: {exc}")

    # the threads

    def _put(self, item: tuple[str, Any]) -> None:
        if item[0] == "flush":
            self._queue.append(item)
            self._wake.set()
        elif len(self._queue) >= QUEUE_ITEMS:  # the sender fell far behind: to disk at once, never block the loop
            self.spill.append(_record(item, self.spill))
        else:
            self._queue.append(item)

    def _send_loop(self) -> None:
        next_retry = 0.0
        while not (self._closing.is_set() and not self._queue):
            items, flushes = self._take()
            records = _records(items, self.spill)
            if not self.online or self.spill.pending():
                for record in records:
                    self.spill.append(record)
                records = []
                if self.online and time.monotonic() >= next_retry and not drain(self.client, self.id, self.spill):  # type: ignore[arg-type]
                    next_retry = time.monotonic() + RETRY_SECONDS
            for i, record in enumerate(records):
                if not send(self.client, self.id, record, self.spill):  # type: ignore[arg-type]
                    for rest in records[i:]:
                        self.spill.append(rest)
                    next_retry = time.monotonic() + RETRY_SECONDS
                    break
            for done in flushes:
                done.set()

    def _take(self) -> tuple[list[tuple[str, Any]], list[threading.Event]]:
        """What the queue holds (up to a batch), taken once a round: the sender never wakes per point, which would
        take the interpreter from the loop at every log."""
        if len(self._queue) < BATCH_POINTS:
            self._wake.wait(SEND_SECONDS)
        self._wake.clear()
        items: list[tuple[str, Any]] = []
        flushes: list[threading.Event] = []
        while len(items) < BATCH_POINTS:
            try:
                kind, value = self._queue.popleft()
            except IndexError:
                break
            if kind == "flush":
                flushes.append(value)
                break
            items.append((kind, value))
        return items, flushes

    def _beat_loop(self) -> None:
        while not self._closing.wait(BEAT_SECONDS):
            if not self.online:
                continue
            try:
                answer = self.client.heartbeat(self.id, Beat(step=self.step, stage=self._stage[:200]))  # type: ignore[union-attr, arg-type]
            except (httpx.TransportError, ApiError):
                continue
            if answer.stop:
                self.cancelled.set()


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != math.inf else None


def _points(step: int, metrics: dict[str, float]) -> list[dict[str, Any]]:
    return [{"name": name, "step": step, "value": _finite(value)} for name, value in metrics.items()]


def _record(item: tuple[str, Any], spill: Spill) -> dict[str, Any]:
    kind, value = item
    if kind == "points":
        return {"points": _points(*value)}
    if kind == "artifact":
        return spill.keep_artifact(*value)
    return {"result": value.model_dump(mode="json")}


def _records(items: list[tuple[str, Any]], spill: Spill) -> list[dict[str, Any]]:
    """The points in batches of BATCH_POINTS (in the order logged), then each result and artifact (its bytes kept
    on disk)."""
    points = [point for kind, value in items if kind == "points" for point in _points(*value)]
    out = [{"points": points[i : i + BATCH_POINTS]} for i in range(0, len(points), BATCH_POINTS)]
    return out + [_record(item, spill) for item in items if item[0] != "points"]


def send(client: Client, run_id: int, record: dict[str, Any], spill: Spill) -> bool:
    """One record to the server: True when it was taken (or refused for good: logged, not kept); False when the
    server could not be reached or was unwell, to keep it for later."""
    try:
        if "points" in record:
            client.add_points(run_id, Points.model_validate(record))
        elif "artifact" in record:
            meta = record["artifact"]
            data = spill.artifact(meta["sha256"])
            if data is not None:  # (None: sent before, by a sync that stopped before it deleted the record)
                client.add_artifact(run_id, meta["kind"], meta["step"], data)
                spill.forget_artifact(meta["sha256"])
        else:
            client.add_result(run_id, ResultIn.model_validate(record["result"]))
    except httpx.TransportError:
        return False
    except ApiError as exc:
        if exc.status >= 500 or exc.status == 429:
            return False
        log.warning("dynascope: the server refused a record of run %s: %s", run_id, exc)
    return True


def drain(client: Client, run_id: int, spill: Spill, progress: Callable[[int], None] = lambda _: None) -> bool:
    """Send the pending files in order, deleting each once all of it was taken; False if the server stopped answering."""
    for segment in spill.segments():
        records = spill.records(segment)
        for record in records:
            if not send(client, run_id, record, spill):
                return False
        segment.unlink()
        progress(len(records))
    return True


def _agree(flag: bool) -> bool:
    """`flag` on any rank, on every rank of torch.distributed's default group (the flag alone without one)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    import torch

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class Follower(Run):
    """A rank other than 0 under torch.distributed: the run is rank 0's. It keeps the step count, and its probes
    (gradient statistics only) take part in gathering the global batch's numbers; it sends and keeps nothing."""

    def __init__(self, request: RunCreate) -> None:
        self.request, self.client, self.id = request, None, None
        self.cancelled = threading.Event()
        self.step = 0
        self._logged_step: int | None = None
        self._stage = "running"
        self._watched: Any = None
        self._finished = False

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._watched is None and step is None:
            self.step += 1

    def result(self, kind: str, step: int, data: dict[str, Any]) -> None:
        pass

    def artifact(self, kind: str, step: int, data: bytes) -> None:
        pass

    def finish(self, status: Literal["succeeded", "failed", "cancelled", "diverged"] = "succeeded", error: str | None = None) -> None:
        if not self._finished and self._watched is not None:
            self._watched.close()
        self._finished = True
