"""Track a plain PyTorch loop with Dynascope: `python examples/track_plain_loop.py` (DYNASCOPE_URL and
DYNASCOPE_TOKEN name the server and your API token; without a server the run is kept on disk for
`dynascope sync`). A small MLP on scikit-learn's digits, with gradient statistics every 10 steps, the Hessian's
top eigenvalues every 100 and neural collapse every 100, on a fixed probe batch of 512 examples."""

import torch
from sklearn.datasets import load_digits
from torch import nn

import dynascope

digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16
y = torch.tensor(digits.target)
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
steps = 300

run = dynascope.init("digits-mlp-own-loop", config={"lr": 0.2, "momentum": 0.9, "batch": 64}, total_steps=steps)
run.watch(
    model,
    loss_fn,
    optimizer,
    probe_batch=(x[:512], y[:512]),
    probes={"gradstats": {"every": 10}, "hessian": {"every": 100, "top_k": 3}, "collapse": {"every": 100}},
)
generator = torch.Generator().manual_seed(0)
for step in range(steps):
    idx = torch.randint(len(y), (64,), generator=generator)
    loss = loss_fn(model(x[idx]), y[idx])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    run.log({"train/loss": loss.item()})
    if run.should_stop():  # cancelled in the dashboard or with `dynascope cancel`
        break
run.finish()
print(f"run {run.id}: {run.spill.root}")
