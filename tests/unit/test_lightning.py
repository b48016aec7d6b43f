"""The Lightning callback, with the real Lightning: the same model, data order and optimizer trained by a
Lightning Trainer and by a plain loop with run.watch record the same probe numbers (gradient statistics from the
step's own backward, the Hessian on the probe batch), kept offline on disk."""

import json
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dynascope
from dynascope.integrations.lightning import DynascopeCallback
from tests.helpers import kept_series

PROBES = {"gradstats": {"every": 2}, "hessian": {"every": 5, "top_k": 1}}
STEPS = 12


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(96, 6, generator=gen), torch.randint(0, 3, (96,), generator=gen)


def _net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


class Module(pl.LightningModule):
    def __init__(self, lr: float = 0.3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = _net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def test_a_lightning_run_records_what_the_same_plain_loop_records(tmp_path: Path):
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
    callback = DynascopeCallback("lightning-run", probes=PROBES, probe_batch=(x, y), mode="offline", dir=tmp_path / "lightning")
    trainer = pl.Trainer(
        max_steps=STEPS, callbacks=[callback], accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(Module(), loader)
    # the same steps in a plain loop
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.3)
    loss_fn = nn.CrossEntropyLoss()
    run = dynascope.init("plain-run", mode="offline", dir=tmp_path / "plain")
    run.watch(net, loss_fn, optimizer, probe_batch=(x, y), probes=PROBES)
    for bx, by in [b for _ in range(2) for b in loader][:STEPS]:  # two epochs, as the Trainer goes
        loss = loss_fn(net(bx), by)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        run.log({"train/loss": loss.item()})
    run.finish()
    ours, plain = kept_series(tmp_path / "lightning"), kept_series(tmp_path / "plain")
    for name in ("train/loss", "grad/noise_scale", "grad/norm", "grad/alpha", "hessian/lambda_1"):
        assert ours[name] == plain[name], name
    assert sorted(ours["grad/noise_scale"]) == list(range(0, STEPS, 2)) and sorted(ours["hessian/lambda_1"]) == [0, 5, 10]
    meta = json.loads((tmp_path / "lightning" / "run.json").read_text())["create"]
    assert meta["config"] == {"lr": 0.3} and meta["facts"]["framework"] == "lightning" and meta["facts"]["total_steps"] == STEPS
    assert json.loads((tmp_path / "lightning" / "end.json").read_text())["status"] == "succeeded"
