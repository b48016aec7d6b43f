"""Track a Lightning Trainer with Dynascope: `python examples/track_lightning.py` (DYNASCOPE_URL and
DYNASCOPE_TOKEN as for any tracked run). An MLP on scikit-learn's digits; gradient statistics every 5 steps
from the step's own backward, the Hessian's top eigenvalue every 50 on a fixed probe batch."""

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dynascope.integrations.lightning import DynascopeCallback


class Digits(pl.LightningModule):
    def __init__(self, lr: float = 0.1, width: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16
y = torch.tensor(digits.target)
callback = DynascopeCallback(
    "digits-lightning", probes={"gradstats": {"every": 5}, "hessian": {"every": 50, "top_k": 1}}, probe_batch=(x[:512], y[:512])
)
trainer = pl.Trainer(max_steps=150, callbacks=[callback], accelerator="cpu", logger=False, enable_checkpointing=False)
trainer.fit(Digits(), DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True))
print(f"run {callback.run.id if callback.run else None}")
