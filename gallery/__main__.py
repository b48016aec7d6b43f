"""`python -m gallery [name ...] [--url URL --token TOKEN]` (`make gallery`): submits each phenomenon's spec from
examples/gallery/ to an embedded server started here (or to `--url`), shows a progress bar per phenomenon, then
draws its figures to docs/gallery/<name>.png and writes what it measured to docs/gallery/index.json, the index
page and the README's gallery."""

import argparse
import json
import os
import platform
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from dynascope.client import Client
from gallery import index
from gallery.phenomena import PHENOMENA, Phenomenon, Runs
from gallery.render import Renderer
from gallery.server import embedded

SPECS = index.ROOT / "examples" / "gallery"
ENDED = ("succeeded", "failed", "cancelled", "diverged", "lost")
console = Console()


def submit(client: Client, phenomenon: Phenomenon) -> Runs:
    text = (SPECS / phenomenon.spec).read_bytes()
    if "sweep" in yaml.safe_load(text):
        made = client.submit(text, sweep=True)
        return Runs(client, made["jobs"], made["id"])
    return Runs(client, [client.submit(text)], None)


def wait(client: Client, runs: dict[str, Runs]) -> None:
    """Until every job has ended, a bar per phenomenon (its jobs' mean progress); a job that did not succeed stops it."""
    columns = (
        TextColumn("{task.description:<20}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%  {task.fields[stage]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bars:
        tasks = {name: bars.add_task(name, total=1.0, stage="queued") for name in runs}
        while True:
            ended = 0
            for name, run in runs.items():
                run.jobs = [job if job["status"] == "succeeded" else client.job(job["id"]) for job in run.jobs]
                failed = [j for j in run.jobs if j["status"] in ENDED and j["status"] != "succeeded"]
                if failed:
                    raise RuntimeError(f"{name}: job {failed[0]['id']} {failed[0]['status']}: {failed[0]['error']}")
                done = all(j["status"] == "succeeded" for j in run.jobs)
                ended += done
                stage = "done" if done else next((j["stage"] for j in run.jobs if j["status"] == "running"), "queued")
                bars.update(tasks[name], completed=sum(j["progress"] for j in run.jobs) / len(run.jobs), stage=stage)
            if ended == len(runs):
                return
            time.sleep(2)  # within a token's rate limit with dozens of jobs


def _seconds(run: Runs) -> float:
    spans = [datetime.fromisoformat(j["finished_at"]) - datetime.fromisoformat(j["started_at"]) for j in run.jobs]
    return sum(s.total_seconds() for s in spans)


def shoot(renderer: Renderer, phenomenon: Phenomenon, runs: Runs) -> dict[str, Any]:
    started = time.monotonic()
    shot = phenomenon.shoot(runs)
    renderer.png(shot.figures, index.DOCS / f"{phenomenon.name}.png")
    return {
        "name": phenomenon.name,
        "title": phenomenon.title,
        "paper": phenomenon.paper,
        "spec": phenomenon.spec,
        "says": shot.says,
        "measured": shot.measured,
        "jobs": [j["id"] for j in runs.jobs],
        "seconds": round(_seconds(runs) + time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gallery", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"some of {[p.name for p in PHENOMENA]} (default: all)")
    parser.add_argument("--url", help="a running server (default: an embedded one started here)")
    parser.add_argument("--token", default="", help="an API token for --url")
    parser.add_argument("--workers", type=int, default=2, help="the embedded server's worker processes")
    args = parser.parse_args()
    unknown = set(args.names) - {p.name for p in PHENOMENA}
    if unknown:
        parser.error(f"no phenomena named {sorted(unknown)}")
    chosen = [p for p in PHENOMENA if not args.names or p.name in args.names]
    started = time.monotonic()
    with ExitStack() as stack:
        renderer = stack.enter_context(Renderer())  # first: without a browser, nothing is run
        url, token = args.url, args.token
        if url is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dynascope-gallery-")))
            url, token = stack.enter_context(embedded(workdir, args.workers))
            console.print(f"embedded server at {url} (in {workdir})")
        client = stack.enter_context(Client(url, token, timeout=120))
        runs = {p.name: submit(client, p) for p in chosen}
        wait(client, runs)
        entries = []
        for p in chosen:
            entries.append(shoot(renderer, p, runs[p.name]))
            console.print(f"[bold]{p.name}[/]: {entries[-1]['says']}")
    old = json.loads(index.INDEX.read_text()) if index.INDEX.exists() else None
    machine = f"{platform.machine()}, {os.cpu_count()} cores, CPU"
    index.write(index.merged(old, entries, [p.name for p in PHENOMENA], machine, time.monotonic() - started))
    console.print(f"gallery: {len(entries)} pictures in docs/gallery/ ({(time.monotonic() - started) / 60:.1f} min)")


if __name__ == "__main__":
    main()
