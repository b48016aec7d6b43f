"""The Hugging Face Trainer callback, with the real transformers: a 2-layer GPT-2 built from a config (nothing
downloaded) trained by a Trainer (AdamW, the gradient clipped) and by a plain loop with run.watch on the same
batches records the same probe numbers — gradient statistics from the step's own backward, before the clipping —
kept offline on disk."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import SequentialSampler
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import dynascope
from dynascope.integrations.transformers import DynascopeCallback, model_loss
from tests.helpers import kept_series

PROBES = {"gradstats": {"every": 2}, "hessian": {"every": 5, "top_k": 1}}
STEPS, BATCH, VOCAB, LENGTH, CLIP = 12, 8, 16, 12, 0.5


def _data() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.arange(LENGTH) * int(torch.randint(1, 5, (), generator=gen)) + i) % VOCAB for i in range(64)]


def _model() -> GPT2LMHeadModel:
    torch.manual_seed(1)
    # eager attention: the Hessian's products need attention that autograd differentiates twice
    config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    config._attn_implementation = "eager"
    return GPT2LMHeadModel(config)


class InOrder(Trainer):
    """The batches in the dataset's order, as the plain loop takes them."""

    def _get_train_sampler(self, *args, **kw):
        return SequentialSampler(self.train_dataset)


class TrainerLoss(nn.Module):
    """What the Trainer differentiates for this GPT2LMHeadModel: the token losses' sum over the labels it counts,
    all 12 of a row where 11 are predicted (it does not know this class's loss shifts them) — 11/12 of the mean."""

    def forward(self, out, labels):
        logits = out.logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, VOCAB), labels[:, 1:].reshape(-1), reduction="sum") / labels.ne(-100).sum()


def test_a_trainer_run_records_what_the_same_plain_loop_records(tmp_path: Path):
    rows = _data()
    probe = (torch.stack(rows[:16]), torch.stack(rows[:16]))
    callback = DynascopeCallback("hf-run", probes=PROBES, probe_batch=probe, loss_fn=TrainerLoss(), mode="offline", dir=tmp_path / "hf")
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        max_grad_norm=CLIP,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    InOrder(model=_model(), args=args, train_dataset=[{"input_ids": r, "labels": r} for r in rows], callbacks=[callback]).train()
    # the same steps in a plain loop: AdamW as the Trainer makes it, the gradient clipped after the backward
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    run = dynascope.init("plain-run", mode="offline", dir=tmp_path / "plain")
    loss_fn = TrainerLoss()
    run.watch(model, loss_fn, optimizer, probe_batch=probe, probes=PROBES, example_loss=model_loss(causal=True)[1])
    batches = [torch.stack(rows[i : i + BATCH]) for i in range(0, len(rows), BATCH)]
    for x in (batches * 2)[:STEPS]:
        loss = loss_fn(model(x), x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad()
        run.log({"train/loss": loss.item()})
    run.finish()
    ours, plain = kept_series(tmp_path / "hf"), kept_series(tmp_path / "plain")
    assert sorted(ours["grad/noise_scale"]) == list(range(0, STEPS, 2)) and sorted(ours["hessian/lambda_1"]) == [0, 5, 10]
    assert min(ours["grad/norm"].values()) > CLIP  # the statistics are of the gradient before the Trainer clipped it
    # the Trainer's loss is computed inside the model, in other operations: the last bits differ, and twelve Adam
    # steps carry that to ~1e-6 (to 2e-5 in the noise scale, whose unbiased ‖G‖² nearly cancels at step 2)
    for name, rel in [
        ("train/loss", 1e-5),
        ("grad/norm", 1e-5),
        ("grad/alpha", 1e-5),
        ("hessian/lambda_1", 1e-5),
        ("grad/noise_scale", 1e-4),
    ]:
        assert ours[name].keys() == plain[name].keys(), name
        assert [v is None for v in ours[name].values()] == [v is None for v in plain[name].values()], name  # (not finite)
        finite = [(a, b) for a, b in zip(ours[name].values(), plain[name].values(), strict=True) if a is not None]
        assert [a for a, _ in finite] == pytest.approx([b for _, b in finite], rel=rel), name
    layer = "grad/norm/transformer.h.0.attn.c_attn.weight"  # a Conv1D, by the transposed linear rule
    assert list(ours[layer].values()) == pytest.approx(list(plain[layer].values()), rel=1e-5)
    meta = json.loads((tmp_path / "hf" / "run.json").read_text())["create"]
    assert meta["facts"]["framework"] == "transformers" and meta["facts"]["total_steps"] == STEPS
    assert meta["config"]["learning_rate"] == 3e-3 and meta["config"]["model_type"] == "gpt2"
    assert ours["lr"] == {s: pytest.approx(3e-3) for s in range(STEPS)}
    assert json.loads((tmp_path / "hf" / "end.json").read_text())["status"] == "succeeded"
    # each Hessian measurement's eigenvectors kept as safetensors, to send with the run
    assert len(list((tmp_path / "hf" / "artifacts").glob("*.safetensors"))) == 3


def test_accumulated_gradients_are_refused_with_gradient_statistics(tmp_path: Path):
    callback = DynascopeCallback("hf-accumulating", probes={"gradstats": {"every": 1}}, mode="offline", dir=tmp_path / "run")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, gradient_accumulation_steps=2, report_to=[], use_cpu=True)
    rows = _data()
    trainer = Trainer(model=_model(), args=args, train_dataset=[{"input_ids": r, "labels": r} for r in rows], callbacks=[callback])
    with pytest.raises(ValueError, match="gradient_accumulation_steps=1"):
        trainer.train()


def test_the_default_loss_is_the_models_own():
    model, rows = _model(), torch.stack(_data()[:4])
    loss_fn, each = model_loss(causal=True)
    out = model(rows, labels=rows)
    assert float(loss_fn(out, rows)) == pytest.approx(float(out.loss), rel=1e-6)
    assert float(each(out, rows).mean()) == pytest.approx(float(out.loss), rel=1e-6)  # equal lengths: the mean of the means
    masked = rows.clone()
    masked[0, 5:] = -100
    out = model(rows, labels=masked)
    assert float(loss_fn(out, masked)) == pytest.approx(float(out.loss), rel=1e-6)
    expected = F.cross_entropy(out.logits[0, :4], rows[0, 1:5])
    assert float(each(out, masked)[0]) == pytest.approx(float(expected), rel=1e-6)


def test_the_instability_probe_reads_gpt2s_sdpa_attention_in_the_trainers_own_step(tmp_path: Path):
    """GPT-2 with attn_implementation="sdpa": each layer's scaled_dot_product_attention call is read from the
    Trainer's own forward, and its largest logit equals one recomputed from the weights and the step's batch."""
    rows = _data()
    torch.manual_seed(1)
    config = GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    config._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(config)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    callback = DynascopeCallback(
        "hf-sdpa",
        probes={"instability": {"every": 2, "attention_examples": None}},
        probe_batch=(torch.stack(rows[:4]), torch.stack(rows[:4])),
        mode="offline",
        dir=tmp_path / "hf",
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=BATCH,
        learning_rate=3e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    InOrder(model=model, args=args, train_dataset=[{"input_ids": r, "labels": r} for r in rows], callbacks=[callback]).train()
    kept = kept_series(tmp_path / "hf")
    check = GPT2LMHeadModel(config)
    check.load_state_dict(initial)
    x = torch.stack(rows[:BATCH])
    with torch.no_grad():
        inputs = check(x, output_hidden_states=True).hidden_states
        for i, block in enumerate(check.transformer.h):
            q, k, _ = block.attn.c_attn(block.ln_1(inputs[i])).split(16, dim=2)
            q, k = (t.view(BATCH, LENGTH, 2, 8).transpose(1, 2) for t in (q, k))
            logits = q @ k.transpose(-2, -1) / 8**0.5
            expected = float(logits[:, :, torch.ones(LENGTH, LENGTH, dtype=torch.bool).tril()].abs().max())
            assert kept[f"instability/attn_logit_max/sdpa.{i}"][0] == pytest.approx(expected, rel=1e-5), i
    assert sorted(kept["instability/attn_logit_max/sdpa.1"]) == [0, 2]
    assert sorted(kept["instability/logz_max_abs"]) == [0, 2] and sorted(kept["instability/update_rms/all"]) == [0, 2]
