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
the batch's targets and per-example losses; the optimizer's step is the update, and the probes run just before
it (the gradient is in `.grad`) and just after it. Step s's probes see the weights before update s, as in a
server job; `run.log` puts points at the step of the latest training forward.
"""

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import httpx

from dynascope.client import ApiError, Client
from dynascope.settings import Probes
from dynascope.spill import Spill
from dynascope.tracking import Beat, Finish, Point, Points, ResultIn, RunCreate, TrackedFacts

log = logging.getLogger("dynascope")
QUEUE_ITEMS = 200_000  # past this the loop writes straight to disk (the sender fell behind)
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
) -> "Run":
    """A new run. Online, it is created on the server at once (DYNASCOPE_URL, DYNASCOPE_TOKEN); if the server
    cannot be reached, or offline, it lives in `dir` (default ./.dynascope/runs/<id>) until `dynascope sync`."""
    request = RunCreate(
        name=name,
        config=config or {},
        facts=TrackedFacts(host=socket.gethostname(), framework=framework, total_steps=total_steps),
    )
    root = Path(dir) if dir is not None else _default_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    return Run(request, Spill(root), Client(url, token) if mode == "online" else None)


class Run:
    def __init__(self, request: RunCreate, spill: Spill, client: Client | None) -> None:
        self.request, self.spill, self.client = request, spill, client
        self.id: int | None = None
        self.cancelled = threading.Event()
        self.step = 0  # the optimizer steps seen (a watched run), or the log calls (one that is not)
        self._logged_step: int | None = None
        self._names: set[str] = set()
        self._stage = "running"
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(QUEUE_ITEMS)
        self._closing = threading.Event()
        self._wake = threading.Event()  # a flush or the end: the sender goes at once instead of at its next round
        self._watched: Any = None  # the probes and hooks, once watch() is called
        self._finished = False
        self._create()
        self._sender = threading.Thread(target=self._send_loop, name="dynascope-sender", daemon=True)
        self._beater = threading.Thread(target=self._beat_loop, name="dynascope-heartbeat", daemon=True)
        self._sender.start()
        self._beater.start()

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
        for name, value in metrics.items():
            if name not in self._names:  # each name checked once; the points themselves are built unchecked (the loop's time)
                Point(name=name, step=step, value=None)
                self._names.add(name)
            self._put(("point", Point.model_construct(name=name, step=int(step), value=_finite(value))))

    def result(self, kind: str, step: int, data: dict[str, Any]) -> None:
        self._put(("result", ResultIn(kind=kind, step=step, data=data)))

    def should_stop(self) -> bool:
        """Someone cancelled the run in the dashboard or with `dynascope cancel`."""
        return self.cancelled.is_set()

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
        try:
            self._queue.put_nowait(item)
        except queue.Full:  # the sender fell far behind: to disk at once, never block the loop
            if item[0] != "flush":
                self.spill.append(_record(item))
        if item[0] == "flush":
            self._wake.set()

    def _send_loop(self) -> None:
        next_retry = 0.0
        while not (self._closing.is_set() and self._queue.empty()):
            items, flushes = self._take()
            records = _records(items)
            if not self.online or self.spill.pending():
                for record in records:
                    self.spill.append(record)
                records = []
                if self.online and time.monotonic() >= next_retry and not drain(self.client, self.id, self.spill):  # type: ignore[arg-type]
                    next_retry = time.monotonic() + RETRY_SECONDS
            for i, record in enumerate(records):
                if not send(self.client, self.id, record):  # type: ignore[arg-type]
                    for rest in records[i:]:
                        self.spill.append(rest)
                    next_retry = time.monotonic() + RETRY_SECONDS
                    break
            for done in flushes:
                done.set()

    def _take(self) -> tuple[list[tuple[str, Any]], list[threading.Event]]:
        """What the queue holds (up to a batch), taken once a round: the sender never wakes per point, which would
        take the interpreter from the loop at every log."""
        if self._queue.qsize() < BATCH_POINTS:
            self._wake.wait(SEND_SECONDS)
        self._wake.clear()
        items: list[tuple[str, Any]] = []
        flushes: list[threading.Event] = []
        while len(items) < BATCH_POINTS:
            try:
                kind, value = self._queue.get_nowait()
            except queue.Empty:
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


def _finite(value: Any) -> float | None:
    v = float(value)
    return v if v == v and abs(v) != float("inf") else None


def _record(item: tuple[str, Any]) -> dict[str, Any]:
    kind, value = item
    if kind == "point":
        return {"points": [value.model_dump(mode="json")]}
    return {"result": value.model_dump(mode="json")}


def _records(items: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """The points as one batch (in the order logged), then each result."""
    points = [v.model_dump(mode="json") for k, v in items if k == "point"]
    out: list[dict[str, Any]] = [{"points": points}] if points else []
    return out + [{"result": v.model_dump(mode="json")} for k, v in items if k == "result"]


def send(client: Client, run_id: int, record: dict[str, Any]) -> bool:
    """One record to the server: True when it was taken (or refused for good: logged, not kept); False when the
    server could not be reached or was unwell, to keep it for later."""
    try:
        if "points" in record:
            client.add_points(run_id, Points.model_validate(record))
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
            if not send(client, run_id, record):
                return False
        segment.unlink()
        progress(len(records))
    return True
