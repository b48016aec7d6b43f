"""`python -m bench [name ...]`: run the benchmarks, print one table, keep JSON under bench/results/local/.

Each benchmark runs our code and the public tool it competes with in the same process, on the same model,
data and thread count, and reports the ratio.
"""

import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import (
    bounded_memory,
    dashboard_first_chart,
    event_streams,
    export_throughput,
    gradstats_overhead,
    hessian_topk,
    hessian_trace_density,
    hessian_tracking,
    instability_overhead,
    job_history,
    landscape_surface,
    load,
    probe_costs,
    signals_overhead,
    tracked_loop,
    train_loop,
)

BENCHMARKS = {
    "train_loop": train_loop.run,
    "tracked_loop": tracked_loop.run,
    "hessian_topk": hessian_topk.run,
    "bounded_memory": bounded_memory.run,
    "hessian_tracking": hessian_tracking.run,
    "hessian_trace_density": hessian_trace_density.run,
    "landscape": landscape_surface.run,
    "gradstats": gradstats_overhead.run,
    "signals": signals_overhead.run,
    "probe_costs": probe_costs.run,
    "instability": instability_overhead.run,
    "dashboard": dashboard_first_chart.run,
    "event_streams": event_streams.run,
    "load": load.run,
    "job_history": job_history.run,
    "export": export_throughput.run,
}


def main(names: list[str]) -> None:
    console = Console()
    out_dir = Path(__file__).parent / "results" / "local"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = Table("benchmark", "case", "ours", "anchor", "ratio")
    for name in names or list(BENCHMARKS):
        console.print(f"running {name} …")
        rows = BENCHMARKS[name]()
        meta = {"machine": platform.machine(), "python": platform.python_version(), "when": datetime.now(UTC).isoformat(timespec="seconds")}
        (out_dir / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
        for row in rows:
            table.add_row(row["benchmark"], row["case"], row["ours"], row["anchor"], row["ratio"])
    console.print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
