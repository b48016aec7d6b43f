"""The instability probe against independent computations: the zoo transformer's attention logits recomputed by
hand from its weights and batch (float64, with and without qk-layernorm), log Z as logsumexp of the outputs, the
update's RMS as the optimizer's actual update, ε's share from Adam's own state; nn.MultiheadAttention's and
scaled_dot_product_attention's logits against their own attention weights and outputs; a planted loss spike;
a model without attention; training unchanged with the probe on; independent weight decay."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from backend.spec import AdamOptimizer, JobSpec, TransformerModel
from dynascope.analysis import instability as ins
from dynascope.probes import Batch, ProbeSet, Run
from dynascope.settings import Probes
from tests.helpers import ListRecorder, run
from worker.training.models import Transformer


def by_hand(model: Transformer, ids: torch.Tensor) -> tuple[list[dict[str, float]], torch.Tensor]:
    """Each layer's logit statistics and the output logits, written out from the model's weights (not its forward)."""
    t = ids.shape[1]
    x = model.tokens(ids) + model.positions(torch.arange(t))
    visible = torch.ones(t, t, dtype=torch.bool).tril()
    layers = []
    for block in model.blocks:
        a = block.attn
        h = block.ln1(x)
        q, k, _ = a.qkv(h).view(len(ids), t, 3, a.heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k = a.q_norm(q), a.k_norm(k)
        s = q @ k.transpose(-2, -1) / math.sqrt(a.head_dim)
        p = s.masked_fill(~visible, -math.inf).softmax(-1)[:, :, 1:]  # rows that see ≥ 2 keys
        entropy = -(p * torch.where(p > 0, p.log(), 0.0)).sum(-1)
        head_top = p.amax(-1).mean((0, 2))
        layers.append(
            {
                "logit_max": float(s[:, :, visible].abs().max()),
                "logit_mean": float(s[:, :, visible].abs().mean()),
                "entropy": float(entropy.mean()),
                "onehot": float((head_top > 0.9).double().mean()),
            }
        )
        x = block(x)
    return layers, model.head(model.ln(x))


def probed_loop(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], optimizer, probes: dict, classes: int | None, forward=None
):
    """A hand-written loop calling the probe runner's hooks (the order every loop keeps); the weights before each
    update, and after the last."""
    recorder = ListRecorder()
    loss_fn = nn.CrossEntropyLoss() if classes else nn.MSELoss()
    example = (
        (lambda o, y: F.cross_entropy(o.reshape(-1, o.shape[-1]), y.reshape(-1), reduction="none").reshape(len(y), -1).mean(1))
        if classes
        else (lambda o, y: (o - y).pow(2).reshape(len(y), -1).mean(1))
    )
    x_all = torch.cat([x for x, _ in batches])
    y_all = torch.cat([y for _, y in batches])
    run_ = Run(
        model,
        lambda o, y: loss_fn(o.reshape(-1, o.shape[-1]), y.reshape(-1)) if classes else loss_fn(o, y),
        example,
        x_all,
        y_all,
        classes,
        0,
        len(batches),
        threshold=lambda: (math.inf, ""),
        optimizer=optimizer,
    )
    probe_set = ProbeSet.build(Probes.model_validate(probes), run_, recorder)
    weights = []
    for step, (x, y) in enumerate(batches):
        probe_set.before_step(step)
        weights.append({k: v.detach().clone() for k, v in model.named_parameters()})
        with probe_set.capture(step):
            out = (forward or model)(x)
        losses = example(out, y)
        batch = Batch(step, x, y, torch.arange(len(y)), losses.detach(), float(losses.detach().mean()), optimizer.param_groups[0]["lr"])
        probe_set.after_forward(batch)
        optimizer.zero_grad()
        losses.mean().backward()
        probe_set.after_backward(batch)
        optimizer.step()
        probe_set.after_step(batch)
    probe_set.finish()
    weights.append({k: v.detach().clone() for k, v in model.named_parameters()})
    return recorder, weights


def transformer(qk: bool, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerModel(kind="transformer", layers=2, heads=2, width=16, context=12, qk_layernorm=qk), 11).double()


@pytest.mark.parametrize("qk", [False, True])
def test_the_zoo_transformers_logits_and_log_z_equal_a_recomputation(qk):
    model = transformer(qk)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 11, (6, 12), generator=g), torch.randint(0, 11, (6, 12), generator=g)) for _ in range(5)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    recorder, weights = probed_loop(model, batches, optimizer, {"instability": {"every": 2}}, 11)
    for step in (0, 2, 4):
        check = transformer(qk)
        check.load_state_dict(weights[step])
        with torch.no_grad():
            layers, _ = by_hand(check, batches[step][0][:4])  # attention: the batch's first attention_examples
            _, outputs = by_hand(check, batches[step][0])
        for i, expected in enumerate(layers):
            for stat, value in expected.items():
                got = [v for s, k, v in recorder.points if s == step and k == f"instability/attn_{stat}/blocks.{i}.attn"]
                assert got == [pytest.approx(value, rel=1e-6, abs=1e-12)], (step, i, stat)
        log_z = torch.logsumexp(outputs, -1)
        expected_z = {"logz_mean_abs": log_z.abs().mean(), "logz_max_abs": log_z.abs().max(), "z_loss": log_z.pow(2).mean()}
        for stat, value in expected_z.items():
            assert [v for s, k, v in recorder.points if s == step and k == f"instability/{stat}"] == [pytest.approx(float(value), rel=1e-9)]
    [document] = [d for kind, s, d in recorder.results if kind == "instability" and s == 4]
    assert document["attention"] == ["blocks.0.attn", "blocks.1.attn"] and document["attention_source"] == "step"
    assert document["skipped"] == [] and document["eps"] == 1e-8


def test_update_rms_is_the_optimizers_update_and_eps_share_its_state():
    model = transformer(False)
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randint(0, 11, (4, 12), generator=g), torch.randint(0, 11, (4, 12), generator=g)) for _ in range(4)]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, eps=1e-3)  # (an ε some coordinates fall below)
    recorder, weights = probed_loop(model, batches, optimizer, {"instability": {"at": [3], "groups": "tensor"}}, 11)
    point = {k.removeprefix("instability/"): v for s, k, v in recorder.points if s == 3}
    for name, p in model.named_parameters():
        moved = (weights[4][name] - weights[3][name]) / 0.01
        assert point[f"update_rms/{name}"] == pytest.approx(float(moved.pow(2).mean().sqrt()), rel=1e-9)
        state = optimizer.state[p]
        v_hat = state["exp_avg_sq"] / (1 - 0.999 ** float(state["step"]))
        assert point[f"eps_share/{name}"] == pytest.approx(float((v_hat.sqrt() < 1e-3).double().mean()), abs=1e-12)
    everything = torch.cat([(weights[4][n] - weights[3][n]).flatten() for n, _ in model.named_parameters()]) / 0.01
    assert point["update_rms/all"] == pytest.approx(float(everything.pow(2).mean().sqrt()), rel=1e-9)
    assert 0 < point["eps_share/all"] < 1


def test_grad_rms_is_the_steps_gradient():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    recorder, weights = probed_loop(model, [(x, y)], torch.optim.SGD(model.parameters(), lr=0.1), {"instability": {"at": [0]}}, 3)
    check = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    check.load_state_dict(weights[0])
    F.cross_entropy(check(x), y).backward()
    point = {k.removeprefix("instability/"): v for s, k, v in recorder.points}
    for i in (0, 2):
        grad = torch.cat([check[i].weight.grad.flatten(), check[i].bias.grad.flatten()])
        assert point[f"grad_rms/{i}"] == pytest.approx(float(grad.pow(2).mean().sqrt()), rel=1e-9)
        assert point[f"update_rms/{i}"] == pytest.approx(float(grad.pow(2).mean().sqrt()), rel=1e-9), "SGD: Δθ/lr = −g"
    [document] = [d for kind, _, d in recorder.results if kind == "instability"]
    assert "eps_share/all" not in point and any("second moment" in s for s in document["skipped"])
    assert any(s.startswith("attention: the model has no attention") for s in document["skipped"]), "an MLP: said, not failed"
    assert document["attention"] == [] and document["output_source"] == "step"


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_logits_give_its_own_weights(batch_first):
    torch.manual_seed(4)
    for options in ({}, {"add_bias_kv": True, "add_zero_attn": True}, {"kdim": 5, "vdim": 7}):
        mha = nn.MultiheadAttention(12, 3, batch_first=batch_first, dtype=torch.float64, **options)
        n, t, s = 2, 6, 7
        shape = (lambda a, b, e: (a, b, e)) if batch_first else (lambda a, b, e: (b, a, e))
        q = torch.randn(*shape(n, t, 12), dtype=torch.float64)
        k = torch.randn(*shape(n, s, options.get("kdim", 12)), dtype=torch.float64)
        v = torch.randn(*shape(n, s, options.get("vdim", 12)), dtype=torch.float64)
        padding = torch.zeros(n, s, dtype=torch.bool)
        padding[1, -2:] = True
        causal = torch.ones(t, s, dtype=torch.bool).tril().logical_not()
        _, weights = mha(q, k, v, key_padding_mask=padding, attn_mask=causal, average_attn_weights=False)
        logits = ins.mha_logits(mha, q, k, key_padding_mask=padding, attn_mask=causal)
        np.testing.assert_allclose(logits.softmax(-1).numpy(), weights.detach().numpy(), atol=1e-12, err_msg=str(options))
        per_head = causal.expand(n * 3, t, s) | padding.repeat_interleave(3, 0)[:, None, :]  # a 3-D mask, a row per (example, head)
        last = ins.mha_logits(mha, q, k, attn_mask=per_head, examples=1)
        assert torch.allclose(last, logits[:1], rtol=0, atol=1e-12), "the first example alone"


def test_sdpa_logits_give_its_output():
    torch.manual_seed(5)
    q, k, v = (torch.randn(2, 4, 5, 8, dtype=torch.float64) for _ in range(3))
    bool_mask = torch.rand(5, 5) > 0.3
    bool_mask[:, 0] = True
    cases = [{}, {"is_causal": True}, {"attn_mask": bool_mask}, {"attn_mask": torch.randn(5, 5, dtype=torch.float64)}, {"scale": 0.7}]
    for case in cases:
        expected = F.scaled_dot_product_attention(q, k, v, **case)
        logits = ins.sdpa_logits(q, k, **{key: val for key, val in case.items()})
        np.testing.assert_allclose((logits.softmax(-1) @ v).numpy(), expected.numpy(), atol=1e-12, err_msg=str(case))
        assert torch.allclose(ins.sdpa_logits(q, k, **case, examples=1), logits[:1], rtol=0, atol=1e-12)
    k2, v2 = k[:, :2], v[:, :2]  # grouped-query attention: 4 query heads share 2 key heads
    expected = F.scaled_dot_product_attention(q, k2, v2, enable_gqa=True)
    np.testing.assert_allclose(
        (ins.sdpa_logits(q, k2, enable_gqa=True).softmax(-1) @ v2.repeat_interleave(2, 1)).numpy(), expected.numpy(), atol=1e-12
    )


class SdpaModel(nn.Module):
    """A user's model with attention through F.scaled_dot_product_attention, and a head of classes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.qkv, self.head = nn.Embedding(9, 8), nn.Linear(8, 24), nn.Linear(8, 9)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.embed(ids)).view(*ids.shape, 3, 2, 4).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(y.transpose(1, 2).reshape(*ids.shape, 8))


def sdpa_by_hand(model: SdpaModel, ids: torch.Tensor) -> float:
    q, k, _ = model.qkv(model.embed(ids)).view(*ids.shape, 3, 2, 4).permute(2, 0, 3, 1, 4)
    s = q @ k.transpose(-2, -1) / 2.0
    return float(s[:, :, torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()].abs().max())


def test_a_users_sdpa_attention_is_read_from_the_step_or_else_from_the_probe_batch():
    torch.manual_seed(6)
    model = SdpaModel().double()
    g = torch.Generator().manual_seed(6)
    batches = [(torch.randint(0, 9, (5, 7), generator=g), torch.randint(0, 9, (5, 7), generator=g)) for _ in range(3)]
    recorder, weights = probed_loop(model, batches, torch.optim.Adam(model.parameters(), lr=0.01), {"instability": {"every": 1}}, 9)
    check = SdpaModel().double().requires_grad_(False)
    for step in range(3):
        check.load_state_dict(weights[step])
        [got] = [v for s, k, v in recorder.points if s == step and k == "instability/attn_logit_max/sdpa.0"]
        assert got == pytest.approx(sdpa_by_hand(check, batches[step][0]), rel=1e-9)
    # A wrapper whose own forward the loop never calls: the probe batch is read instead, and said.
    wrapper = nn.Module()
    wrapper.inner = SdpaModel().double()
    wrapper.forward = wrapper.inner.forward
    recorder, weights = probed_loop(
        wrapper,
        batches,
        torch.optim.Adam(wrapper.parameters(), lr=0.01),
        {"instability": {"at": [1], "examples": 4}},
        9,
        forward=wrapper.inner,
    )
    [document] = [d for kind, _, d in recorder.results if kind == "instability"]
    assert document["attention_source"] == "step" and document["output_source"] == "probe batch"


def test_statistics_of_the_first_examples():
    torch.manual_seed(7)
    logits = torch.randn(5, 3, 6, 6, dtype=torch.float64).masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), -math.inf)
    some, alone = ins.attention_stats(logits, 2).summary(0.5), ins.attention_stats(logits[:2]).summary(0.5)
    assert some == alone and some != ins.attention_stats(logits).summary(0.5)
    both = ins.attention_stats(logits[:2]) + ins.attention_stats(logits[2:])
    assert both.summary(0.5) == pytest.approx(ins.attention_stats(logits).summary(0.5), rel=1e-12), "calls of a site add up"


class MhaModel(nn.Module):
    """A user's model with nn.MultiheadAttention (whose fast path calls scaled_dot_product_attention inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.attn, self.head = nn.Embedding(9, 8), nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 9)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).triu(1)
        return self.head(self.attn(x, x, x, attn_mask=causal, need_weights=False)[0])


def test_a_users_multihead_attention_is_read_once_from_the_step():
    torch.manual_seed(8)
    model = MhaModel().double()
    g = torch.Generator().manual_seed(8)
    batches = [(torch.randint(0, 9, (3, 6), generator=g), torch.randint(0, 9, (3, 6), generator=g)) for _ in range(2)]
    recorder, weights = probed_loop(model, batches, torch.optim.Adam(model.parameters(), lr=0.01), {"instability": {"every": 1}}, 9)
    [document, _] = [d for kind, _, d in recorder.results if kind == "instability"]
    assert document["attention"] == ["attn"], "its inner scaled_dot_product_attention is not counted again"
    check = MhaModel().double().requires_grad_(False)
    for step in range(2):
        check.load_state_dict(weights[step])
        x = check.embed(batches[step][0])
        w = check.attn.in_proj_weight
        q, k = (
            F.linear(x, w[i * 8 : (i + 1) * 8], check.attn.in_proj_bias[i * 8 : (i + 1) * 8]).view(3, 6, 2, 4).transpose(1, 2)
            for i in (0, 1)
        )
        s = q @ k.transpose(-2, -1) / 2.0
        expected = float(s[:, :, torch.ones(6, 6, dtype=torch.bool).tril()].abs().max())
        [got] = [v for st, name, v in recorder.points if st == step and name == "instability/attn_logit_max/attn"]
        assert got == pytest.approx(expected, rel=1e-9)


def test_a_planted_loss_spike_is_found_where_it_begins():
    from dynascope.probes.instability import Instability
    from dynascope.settings import InstabilityProbe

    model = nn.Linear(2, 2)
    run_ = Run(
        model, F.cross_entropy, F.cross_entropy, torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), 2, 0, 200, threshold=lambda: (1.0, "")
    )
    probe = Instability(InstabilityProbe(every=1000, spike_window=20, spike_factor=1.5), run_)
    losses = [2.0 - 0.005 * s for s in range(100)] + [4.0, 5.0, 3.0] + [1.5] * 40 + [3.5]
    found = {}
    for step, loss in enumerate(losses):
        out = probe.after_forward(Batch(step, torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), loss, 0.1))
        if out is not None:
            found[step] = out.metrics["instability/spike"]
    median_before_100 = float(np.median(losses[80:100]))
    assert set(found) == {100, 143}, "each spike once, at its first step"
    assert found[100] == pytest.approx(4.0 / median_before_100)


def test_the_probe_leaves_training_unchanged():
    raw = {
        "name": "tiny lm",
        "model": {"kind": "transformer", "layers": 2, "heads": 2, "width": 16, "context": 16},
        "data": {"kind": "text", "max_chars": 5000},
        "optimizer": {"kind": "adamw", "lr": 0.01},
        "train": {"steps": 12, "batch_size": 8, "eval_every": 6, "checkpoint_every": 6},
    }
    _, plain = run(raw)
    _, probed = run(raw | {"probes": {"instability": {"every": 3}}})
    assert plain.series("train/loss") == probed.series("train/loss"), "bit-identical training with the probe on"
    for (s1, a), (s2, b) in zip(plain.checkpoints, probed.checkpoints, strict=True):
        assert s1 == s2 and all(torch.equal(a[k], b[k]) for k in a)
    assert len(probed.series("instability/attn_logit_max/blocks.1.attn")) == 4, "steps 0, 3, 6 and 9 (none after the last update)"


def test_a_jobs_recorded_logits_equal_its_checkpoints_recomputation():
    raw = {
        "name": "full-batch lm",
        "model": {"kind": "transformer", "layers": 1, "heads": 2, "width": 16, "context": 8, "qk_layernorm": True},
        "data": {"kind": "text", "max_chars": 1000},
        "optimizer": {"kind": "adam", "lr": 0.03},
        "train": {"steps": 6, "batch_size": 100000, "eval_every": 6, "checkpoint_every": 3},
        "probes": {"instability": {"at": [3], "attention_examples": None}},
    }
    job = JobSpec.model_validate(raw)
    _, recorder = run(raw)
    from worker.training.loop import prepare

    prepared = prepare(job, torch.device("cpu"))
    [weights] = [t for s, t in recorder.checkpoints if s == 3]
    model = prepared.model.double()
    model.load_state_dict({k: v for k, v in weights.items() if "/" not in k})
    with torch.no_grad():
        [layer], outputs = by_hand(model, prepared.split.x_train)  # the whole training set: the step's batch, permuted
    [got] = [v for s, k, v in recorder.points if s == 3 and k == "instability/attn_logit_max/blocks.0.attn"]
    assert got == pytest.approx(layer["logit_max"], rel=1e-5), "float32 forward against a float64 recomputation"
    [z] = [v for s, k, v in recorder.points if s == 3 and k == "instability/z_loss"]
    assert z == pytest.approx(float(torch.logsumexp(outputs, -1).pow(2).mean()), rel=1e-5)


def test_independent_weight_decay_does_not_scale_with_the_peak_lr():
    from worker.training.optim import make_optimizer

    decays = []
    for lr in (1e-3, 1e-1):
        w = nn.Parameter(torch.ones(3, dtype=torch.float64))
        cfg = AdamOptimizer(kind="adamw", lr=lr, weight_decay=0.1, independent_weight_decay=True)
        optimizer = make_optimizer(cfg, [w])
        optimizer.param_groups[0]["lr"] = lr * 0.5  # (a schedule at half its peak)
        w.grad = torch.zeros(3, dtype=torch.float64)  # no gradient: the step is the decay alone
        optimizer.step()
        decays.append(1 - float(w[0]))
    assert decays == [pytest.approx(0.1 * 0.5, rel=1e-12)] * 2
    with pytest.raises(ValueError, match="independent_weight_decay needs kind adamw"):
        AdamOptimizer(kind="adam", lr=0.1, independent_weight_decay=True)
