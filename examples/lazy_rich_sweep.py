"""Lazy against rich learning (Chizat & Bach 2019): `python examples/lazy_rich_sweep.py` (DYNASCOPE_URL and
DYNASCOPE_TOKEN name the server). The same one-hidden-layer MLP on a teacher–student regression, its output
multiplied by α and its learning rate divided by α² (so that the function moves at the same pace), with the
kernel probe. Small α is rich: the neural tangent kernel moves and aligns with the task. Large α is lazy: the
kernel and the weights barely move while the loss still falls. Prints one row per α, then the jobs' ids."""

import json
import time

from rich.console import Console
from rich.table import Table

from dynascope.client import Client

ALPHAS = [0.1, 0.3, 1.0, 3.0, 10.0]
CAPTION = "kernel moved: 1 − cos(K₀, K); alignment: centred kernel–target, first → last probe; weights moved: ‖θ − θ₀‖/‖θ₀‖"
SERIES = ["train/loss", "val/loss", "kernel/distance", "kernel/alignment", "kernel/weight_change"]


def lr(alpha: float) -> float:
    return round(0.05 / alpha**2, 12)


def spec(alpha: float) -> dict:
    return {
        "name": f"lazy-rich-alpha{alpha:g}",
        "model": {"kind": "mlp", "widths": [256], "output_scale": alpha},
        "data": {"kind": "teacher_student", "dim": 10, "teacher_width": 8, "examples": 500, "noise": 0.0},
        "optimizer": {"kind": "sgd", "lr": lr(alpha)},
        "train": {"steps": 400, "batch_size": 100_000, "loss": "mse", "eval_every": 100, "checkpoint_every": None},
        "probes": {"kernel": {"every": 50, "examples": 64}},
    }


def main() -> None:
    console = Console()
    with Client() as client:
        jobs = {alpha: client.submit(json.dumps(spec(alpha)).encode(), "application/json")["id"] for alpha in ALPHAS}
        with console.status("training") as status:
            while not all((job := client.job(i))["status"] in ("succeeded", "failed", "diverged", "cancelled") for i in jobs.values()):
                status.update(f"training: job {job['id']} at {100 * (job['progress'] or 0):.0f} %")
                time.sleep(0.5)
        table = Table("α", "lr", "train loss", "val loss", "kernel moved", "alignment", "weights moved", caption=CAPTION)
        for alpha, job_id in jobs.items():
            found = client.call("GET", f"/jobs/{job_id}/metrics", params={"names": ",".join(SERIES)})["series"]
            values = {s["name"]: s["values"] for s in found}
            alignment = values["kernel/alignment"]
            table.add_row(
                f"{alpha:g}",
                f"{lr(alpha):.3g}",
                f"{values['train/loss'][-1]:.4f}",
                f"{values['val/loss'][-1]:.4f}",
                f"{values['kernel/distance'][-1]:.2e}",
                f"{alignment[0]:.3f} → {alignment[-1]:.3f}",
                f"{values['kernel/weight_change'][-1]:.3f}",
            )
        console.print(table)
    print("jobs", " ".join(str(i) for i in jobs.values()))


if __name__ == "__main__":
    main()
