"""The embedded server the gallery runs on: `dynascope serve` (SQLite, embedded Redis, its workers) in a working
directory of its own, and an API token for its local user."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

CLI = [sys.executable, "-m", "dynascope.cli"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def embedded(workdir: Path, workers: int, settings: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """(url, token) of a fresh embedded server in `workdir` (with DYNASCOPE_* `settings` of its own), stopped on
    leaving. Each worker trains on one thread."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNASCOPE_")} | {"DYNASCOPE_TORCH_THREADS": "1", **(settings or {})}
    with open(workdir / "serve.log", "ab") as log:
        proc = subprocess.Popen(
            [*CLI, "serve", "--port", str(port), "--workers", str(workers)], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, proc, workdir)
            token = subprocess.run(
                [*CLI, "token", "create", "local", "--team", "default", "--name", "gallery"],
                cwd=workdir,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            yield url, token
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _wait_healthy(url: str, proc: subprocess.Popen, workdir: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the embedded server did not start; its log:\n{(workdir / 'serve.log').read_text()[-3000:]}")
