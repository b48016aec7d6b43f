"""One rank of a DDP loop tracked by Dynascope (run by tests/integration/test_tracker.py, two processes, gloo):
`python ddp_loop.py RANK WORLD PORT URL TOKEN NAME STEPS`. Each rank trains on its share of every global batch."""

import os
import sys

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import dynascope

PROBES = {"gradstats": {"every": 1, "details_every": 5}, "hessian": {"every": 5, "top_k": 1}}
GLOBAL_BATCH = 64


def data() -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    return torch.tensor(digits.data[:512], dtype=torch.float32) / 16, torch.tensor(digits.target[:512])


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))


def batches(steps: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(512, (GLOBAL_BATCH,), generator=generator) for _ in range(steps)]


def main(rank: int, world: int, port: int, url: str, token: str, name: str, steps: int) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    x, y = data()
    net = DistributedDataParallel(model())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.3)
    loss_fn = nn.CrossEntropyLoss()
    run = dynascope.init(name, {"world": world}, url=url, token=token, total_steps=steps)
    run.watch(net, loss_fn, optimizer, probe_batch=(x, y), probes=PROBES)
    share = GLOBAL_BATCH // world
    for idx in batches(steps):
        mine = idx[rank * share : (rank + 1) * share]
        loss = loss_fn(net(x[mine]), y[mine])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        run.log({"train/loss": loss.item()})
        if run.should_stop():
            break
    run.finish()
    if rank == 0:
        print(f"run {run.id}", flush=True)
    dist.barrier()  # neither rank tears gloo down while the other still talks to it (an abort at exit, once in CI)
    dist.destroy_process_group()


if __name__ == "__main__":
    rank, world, port = (int(a) for a in sys.argv[1:4])
    main(rank, world, port, sys.argv[4], sys.argv[5], sys.argv[6], int(sys.argv[7]))
