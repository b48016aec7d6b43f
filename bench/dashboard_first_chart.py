"""The job page of a 20,000-step job with every view (training curves, gradient statistics, Hessian, opposing
signals, loss landscape), opened in headless Chromium against `dynascope serve`: the time from navigation to
the first drawn chart, and the largest series any request of the page returned against its max_points.
Target: under 1 s. Runs the job first (a couple of minutes)."""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx

CHROMIUM = os.environ.get("DYNASCOPE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
STEPS, LOADS = 20_000, 5
SPEC = {
    "name": "bench-first-chart",
    "model": {"kind": "mlp", "widths": [64, 64]},
    "data": {"kind": "digits"},
    "optimizer": {"kind": "sgd", "lr": 0.1},
    "train": {"steps": STEPS, "batch_size": 64, "eval_every": 100, "checkpoint_every": 10_000},
    "probes": {
        "gradstats": {"every": 50, "details_every": 5000, "histogram_examples": 4},
        "hessian": {"every": 2000, "top_k": 3, "density": True, "examples": 300},
        "signals": {"probe_examples": 256, "detect_every": 5000},
        "landscape": {"at": ["end"], "resolution": 11, "examples": 300},
    },
}


ENV = {k: v for k, v in os.environ.items() if not k.startswith("DYNASCOPE_")} | {"DYNASCOPE_TORCH_THREADS": "1"}


def _cli(workdir: Path, *args: str) -> str:
    """A `dynascope` server-side command in the served directory (its database and secret key)."""
    done = subprocess.run([sys.executable, "-m", "dynascope.cli", *args], cwd=workdir, env=ENV, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _serve(workdir: Path) -> tuple[subprocess.Popen, httpx.Client]:
    port = 8700 + os.getpid() % 200
    log = open(workdir / "serve.log", "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynascope.cli", "serve", "--port", str(port)], cwd=workdir, env=ENV, stdout=log, stderr=subprocess.STDOUT
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=30)
    for _ in range(300):
        try:
            if client.get("/health").status_code == 200:
                client.headers["authorization"] = f"Bearer {_cli(workdir, 'token', 'create', 'local', '--team', 'default')}"
                return proc, client
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError("dynascope serve did not start")


def run() -> list[dict]:
    if not Path(CHROMIUM).exists():
        return [{"benchmark": "dashboard", "case": f"no Chromium at {CHROMIUM}", "ours": "-", "anchor": "-", "ratio": "-"}]
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        proc, client = _serve(Path(tmp))
        try:
            job = client.post("/jobs", json=SPEC).json()
            deadline = time.monotonic() + 1800
            while client.get(f"/jobs/{job['id']}").json()["status"] not in ("succeeded", "failed", "diverged", "cancelled"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the benchmark job did not finish")
                time.sleep(2)
            times, worst = [], 0.0
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                base = str(client.base_url).removesuffix("/api/v1/")
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                signing_in = context.new_page()  # the session cookie, then every load as a signed-in user
                signing_in.goto(f"{base}/#login={_cli(Path(tmp), 'user', 'login-code', 'local')}")
                signing_in.wait_for_selector("#nav-account")
                signing_in.close()
                for _ in range(LOADS):
                    page = context.new_page()
                    ratios: list[float] = []

                    def check(response, ratios=ratios) -> None:  # type: ignore[no-untyped-def]
                        if "/metrics" in response.url and response.ok:
                            limit = int(parse_qs(urlparse(response.url).query).get("max_points", ["1000"])[0])
                            body = json.loads(response.body())
                            ratios += [len(s["steps"]) / limit for s in body["series"]]

                    page.on("response", check)
                    page.goto(f"{base}/#/jobs/{job['id']}")
                    page.wait_for_function("document.getElementById('loss-plot')?.data?.[0]?.x?.length > 0", timeout=30_000)
                    times.append(page.evaluate("performance.now()"))
                    page.wait_for_function("document.getElementById('gradstats-noise')?.dataset.points > 0", timeout=30_000)
                    worst = max([worst, *ratios])
                    page.close()
                browser.close()
        finally:
            proc.terminate()
            proc.wait(30)
    first = statistics.median(times)
    return [
        {
            "benchmark": "dashboard",
            "case": f"job page, {STEPS:,}-step job, every view: navigation → first chart (median of {LOADS})",
            "ours": f"{first:.0f} ms",
            "anchor": "target 1,000 ms",
            "ratio": f"{first / 1000:.2f} of the target",
        },
        {
            "benchmark": "dashboard",
            "case": "largest series returned / its max_points, over every request of the page",
            "ours": f"{worst:.2f}",
            "anchor": "≤ 1",
            "ratio": "ok" if worst <= 1 else "over",
        },
    ]
