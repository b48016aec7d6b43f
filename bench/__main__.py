"""`python -m bench`: run every benchmark, print a table, keep the JSON under bench/results/local/."""

import json
import platform
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import train_loop

BENCHMARKS = {"train_loop": train_loop.run}


def main() -> None:
    console = Console()
    out_dir = Path(__file__).parent / "results" / "local"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = Table("benchmark", "case", "ours", "anchor", "ratio")
    for name, bench in BENCHMARKS.items():
        console.print(f"running {name} …")
        result = bench()
        result |= {"machine": platform.machine(), "when": datetime.now(UTC).isoformat(timespec="seconds")}
        (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
        table.add_row(name, result["case"], f"{result['ours_steps_per_s']} steps/s",
                      f"{result['bare_steps_per_s']} steps/s (bare PyTorch)", str(result["ratio"]))  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
