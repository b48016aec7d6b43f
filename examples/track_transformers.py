"""Track a Hugging Face Trainer with Dynascope: `python examples/track_transformers.py` (DYNASCOPE_URL and
DYNASCOPE_TOKEN as for any tracked run). A 2-layer GPT-2 built from a config (nothing is downloaded) learns
sequences of characters of Python's own pydoc topics; gradient statistics every 5 steps from the step's own
backward, before the Trainer clips the gradient; the top Hessian eigenvalue every 20 steps on a probe batch."""

import pydoc_data.topics

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from dynascope.integrations.transformers import DynascopeCallback

text = "".join(pydoc_data.topics.topics.values())[:60_000]
alphabet = sorted(set(text))
ids = torch.tensor([alphabet.index(c) for c in text])
length = 32
rows = ids[: len(ids) // length * length].view(-1, length)
train = [{"input_ids": r, "labels": r} for r in rows]

# eager attention: the Hessian's products differentiate the attention twice, which PyTorch's fused CPU kernel cannot
config = GPT2Config(vocab_size=len(alphabet), n_positions=length, n_embd=64, n_layer=2, n_head=4, attn_implementation="eager")
torch.manual_seed(0)
model = GPT2LMHeadModel(config)
callback = DynascopeCallback(
    "gpt2-pydoc-trainer",
    probes={"gradstats": {"every": 5}, "hessian": {"every": 20, "top_k": 1}},
    probe_batch=(rows[:32], rows[:32]),
)
args = TrainingArguments(
    output_dir=".dynascope/hf-example",
    max_steps=60,
    per_device_train_batch_size=16,
    learning_rate=1e-3,
    logging_steps=1,
    report_to=[],
    save_strategy="no",
    use_cpu=not torch.cuda.is_available(),
    disable_tqdm=True,
)
Trainer(model=model, args=args, train_dataset=train, callbacks=[callback]).train()
print(f"run {callback.run.id if callback.run else None}")
