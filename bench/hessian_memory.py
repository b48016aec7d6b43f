"""Peak memory and time of the Hessian's top eigenvalues on a model of ≥ 1M parameters, with every batch's graph
kept (the operator before bounded memory: one graph for the whole sample) and with graphs recomputed per product,
a batch at a time; against one batch's forward and backward. A ResNet-20 of width 32 (1.07M parameters) on
synthetic images; each case in a fresh process (the peak is its resident-set high-water mark above its start;
torch's own peak on a GPU). On this 2-core CPU the sample is 1,000 16×16 images in batches of 100 and the top 2
eigenvalues to 1e-2 (the issue's 10,000 32×32 images: DYNASCOPE_BENCH_EXAMPLES=10000 DYNASCOPE_BENCH_SIZE=32 on
a GPU)."""

import multiprocessing
import os
import time

import torch
from torch.nn import functional as F

EXAMPLES = int(os.environ.get("DYNASCOPE_BENCH_EXAMPLES", "1000"))
SIZE = int(os.environ.get("DYNASCOPE_BENCH_SIZE", "16"))
BATCH, TOP_K, TOL = 100, 2, 1e-2


def _setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    from backend.spec import ResNetModel
    from worker.training.models import resnet

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = resnet(ResNetModel(kind="resnet", depth=20, width=32), (3, SIZE, SIZE), 10).to(device).eval()
    x = torch.randn(EXAMPLES, 3, SIZE, SIZE, device=device)
    y = torch.randint(0, 10, (EXAMPLES,), device=device)
    return model, x, y


def _case(name: str, out: multiprocessing.Queue) -> None:
    from dynascope.analysis.hessian import eigenpairs
    from dynascope.analysis.hvp import HessianOperator
    from dynascope.memory import Peak

    torch.set_num_threads(2)
    model, x, y = _setup()
    device = x.device
    started = time.perf_counter()
    with Peak(device) as peak:
        if name == "one batch: forward and backward":
            F.cross_entropy(model(x[:BATCH]), y[:BATCH]).backward()
            values, hvps, products = [], 0, ""
        else:
            batches = [(x, y)] if name.startswith("kept") else [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, EXAMPLES, BATCH)]
            op = HessianOperator(model, F.cross_entropy, batches, graphs="keep" if name.startswith("kept") else "recompute")
            top = eigenpairs(op, op.n, TOP_K, tol=TOL, seed=0, device=device)
            values, hvps, products = top.values.tolist(), top.hvps, op.describe()
    out.put(
        {"name": name, "seconds": time.perf_counter() - started, "peak": peak.bytes, "values": values, "hvps": hvps, "products": products}
    )


def _measure(name: str) -> dict:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=_case, args=(name, out))
    process.start()
    result = out.get()
    process.join()
    return result


def run() -> list[dict]:
    one = _measure("one batch: forward and backward")
    kept = _measure("kept: one graph of the whole sample")
    rebuilt = _measure(f"recomputed: batches of {BATCH}")
    params = sum(p.numel() for p in _setup()[0].parameters())
    case = f"ResNet-20 ×32 ({params / 1e6:.2f}M parameters), {EXAMPLES:,} images {SIZE}×{SIZE}, top-{TOP_K} to {TOL:g}"
    agree = max(abs(a - b) / abs(b) for a, b in zip(rebuilt["values"], kept["values"], strict=True))
    return [
        {
            "benchmark": "hessian_memory",
            "case": f"{case}: peak memory",
            "ours": f"recomputed: {rebuilt['peak'] / 2**20:,.0f} MiB",
            "anchor": f"kept: {kept['peak'] / 2**20:,.0f} MiB; one batch's forward+backward: {one['peak'] / 2**20:,.0f} MiB",
            "ratio": f"{rebuilt['peak'] / kept['peak']:.2f}× kept, {rebuilt['peak'] / one['peak']:.2f}× one batch",
        },
        {
            "benchmark": "hessian_memory",
            "case": f"{case}: time (eigenvalues agree to {agree:.1e})",
            "ours": f"recomputed: {rebuilt['seconds']:.1f} s ({rebuilt['hvps']} products)",
            "anchor": f"kept: {kept['seconds']:.1f} s ({kept['hvps']} products)",
            "ratio": f"{rebuilt['seconds'] / kept['seconds']:.2f}×",
        },
    ]
