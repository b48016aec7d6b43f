"""Gradient statistics against direct computations from materialized per-example gradients (float64), closed
forms on linear regression, and Cockpit's values on the fixed benchmark batch."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from dynascope.analysis import gradstats as gs

CE = F.cross_entropy
SHARED = Path(os.environ.get("DYNASCOPE_SHARED", Path(__file__).resolve().parents[3] / "shared"))
COCKPIT = SHARED / "bench-cases" / "gradstats" / "results" / "reference_values.json"


class TinyTransformerBlock(nn.Module):
    """Sequences through Linear layers (per-example rule over positions), LayerNorm and an embedding
    (torch.func fallback)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.norm = nn.LayerNorm(8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 11)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.embed(tokens))
        return self.head(torch.tanh(self.mix(h)))


class TiedHead(nn.Module):
    """An output layer sharing its weight with the embedding, the Linear first: its name is the one named_parameters
    keeps, and the Linear rule alone would count only its part of each example's gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 11, bias=False)
        self.embed = nn.Embedding(11, 8)
        self.embed.weight = self.head.weight
        self.mix = nn.Linear(8, 8)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(tokens))))


def seq_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return CE(out.reshape(-1, out.shape[-1]), target.reshape(-1))


def gpt2() -> nn.Module:
    """A 2-layer GPT-2 from a config (nothing downloaded): Conv1D layers, tied input and output embeddings."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    gs.register_transposed_linear(Conv1D)
    config = GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=2, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return GPT2LMHeadModel(config).double()


def cases():
    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.data[:48] / 16.0)
    y = torch.tensor(d.target[:48])
    mlp = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).double()
    cnn = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Conv2d(4, 4, (2, 3), padding="same", dilation=(1, 2)),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 10),
    ).double()
    conv1d = nn.Sequential(
        nn.Unflatten(1, (1, 64)),
        nn.Conv1d(1, 3, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv1d(3, 4, 4, padding="same"),
        nn.Tanh(),
        nn.Conv1d(4, 2, 4, bias=False),
        nn.Flatten(),
        nn.Linear(2 * 29, 10),
    ).double()
    tokens = torch.randint(0, 11, (32, 7))
    block = TinyTransformerBlock().double()
    return {
        "tied": (TiedHead().double(), seq_loss, tokens, torch.roll(tokens, -1, 1)),
        "gpt2": (gpt2(), lambda out, target: seq_loss(out.logits, target), tokens, torch.roll(tokens, -1, 1)),
        "mlp": (mlp, CE, x, y),
        "cnn": (cnn, CE, x.view(-1, 1, 8, 8), y),
        "conv1d": (conv1d, CE, x, y),
        "sequence": (block, seq_loss, tokens, torch.roll(tokens, -1, 1)),
    }


def per_example(model, loss_fn, x, y) -> torch.Tensor:
    params = {n: p.detach() for n, p in model.named_parameters()}

    def one(p, xi, yi):
        return loss_fn(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    pe = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([pe[n].flatten(1) for n in params], 1)


@pytest.mark.parametrize("name", ["mlp", "cnn", "conv1d", "sequence", "tied", "gpt2"])
def test_every_statistic_matches_materialized_per_example_gradients(name):
    model, loss_fn, x, y = cases()[name]
    g = per_example(model, loss_fn, x, y)  # [B, P], independently
    b = len(g)
    loss, moments = gs.batch_moments(model, loss_fn, x, y)
    mean = g.mean(0)
    ours = torch.cat([m.mean.flatten() for m in moments.values()])
    torch.testing.assert_close(ours, mean, rtol=1e-10, atol=1e-12)
    assert [n for n, _ in model.named_parameters()] == list(moments), "no parameter dropped"
    torch.testing.assert_close(sum(m.sq_norms for m in moments.values()), g.pow(2).sum(1), rtol=1e-9, atol=0)
    torch.testing.assert_close(sum(m.dots for m in moments.values()), g @ mean, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(torch.cat([m.coord_sq.flatten() for m in moments.values()]), g.pow(2).sum(0), rtol=1e-9, atol=1e-14)
    s = gs.statistics(loss, moments, dead_fraction=True)
    g2, sq = float(mean.pow(2).sum()), g.pow(2).sum(1)
    grad_sq = (b * g2 - float(sq.mean())) / (b - 1)
    trace = float(g.var(0, unbiased=True).sum())  # tr Σ̂ directly
    assert s.trace_sigma == pytest.approx(trace, rel=1e-9)
    assert s.noise_scale == (pytest.approx(trace / grad_sq, rel=1e-9) if grad_sq > 0 else math.inf)
    assert s.alpha == pytest.approx(g2 / float(sq.mean()), rel=1e-9) and s.m_coherence == pytest.approx(b * s.alpha)
    assert s.norm_test == pytest.approx(math.sqrt(trace / b / g2), rel=1e-9)
    proj = g @ mean
    assert s.inner_test == pytest.approx(math.sqrt(float(proj.var(unbiased=True)) / b) / g2, rel=1e-8)
    orth = g - proj[:, None] * mean / g2
    assert s.ortho_test == pytest.approx(math.sqrt(float(orth.pow(2).sum()) / (b - 1) / b / g2), rel=1e-8)
    var_b = g.var(0, unbiased=False)
    assert s.mean_gsnr == pytest.approx(float((mean.pow(2) / (var_b + 1e-5)).mean()), rel=1e-9)
    es = 1 - b * float((mean.pow(2) / (g.var(0, unbiased=True) + 1e-5)).mean())
    assert s.early_stopping == pytest.approx(es, rel=1e-9)
    assert s.layer_grad_norm == pytest.approx({n: float(m.mean.norm()) for n, m in moments.items()})
    # dead: no variation at all; a coordinate varying at 1e-40 (GPT-2's key biases, zero in exact arithmetic) may
    # read either way, so ours lies between the exactly-constant share and the share below 1e-28
    half = 0.5 / len(mean)
    assert float((var_b == 0).double().mean()) - half <= s.dead_fraction <= float((var_b <= 1e-28).double().mean()) + half
    if name in ("cnn", "conv1d"):
        assert {s.rules[n] for n in s.rules if n.endswith("weight") and "Conv" in type(model[int(n.split(".")[0])]).__name__} == {
            "per-example"
        }
    if name == "sequence":
        assert s.rules["embed.weight"] == "torch.func" and s.rules["norm.weight"] == "norm"
        assert s.rules["mix.weight"] == "per-example"
    if name == "tied":
        assert s.rules["head.weight"] == "torch.func"
    if name == "gpt2":
        assert s.rules["transformer.h.0.attn.c_attn.weight"] == "per-example" and s.rules["transformer.h.1.mlp.c_proj.bias"] == "linear"
        assert s.rules["transformer.wte.weight"] == "torch.func"


def test_noise_scale_and_coherence_on_linear_regression_with_known_noise():
    """At the true weights of y = xᵀw* + ε (x ~ N(0, I), ε ~ N(0, σ²)), the population gradient is 0 and
    E[g gᵀ] = 4σ²I (squared loss), so ‖G‖² → 0; away from w*, ‖G‖² = 4‖Δ‖² and tr Σ follows in closed form."""
    gen = torch.Generator().manual_seed(1)
    n, dim, sigma = 200_000, 5, 0.5
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    w_true = torch.randn(dim, generator=gen, dtype=torch.float64)
    y = x @ w_true + sigma * torch.randn(n, generator=gen, dtype=torch.float64)
    delta = torch.full((dim,), 0.3, dtype=torch.float64)
    model = nn.Linear(dim, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_((w_true + delta)[None])
    loss, moments = gs.batch_moments(model, lambda out, t: F.mse_loss(out.squeeze(-1), t), x, y)
    s = gs.statistics(loss, moments)
    # g_i = 2(x_iᵀΔ − ε_i)x_i: E g = 2Δ, tr Cov g = 4(E[(xᵀΔ)² x xᵀ] − ΔΔᵀ) traced + 4σ² dim
    d2 = float(delta.pow(2).sum())
    want_grad_sq = 4 * d2
    want_trace = 4 * ((dim + 2) * d2 - d2 + sigma**2 * dim)  # E[(xᵀΔ)²‖x‖²] = (dim + 2)‖Δ‖² for Gaussian x
    assert s.grad_sq_unbiased == pytest.approx(want_grad_sq, rel=0.02)
    assert s.trace_sigma == pytest.approx(want_trace, rel=0.02)
    assert s.noise_scale == pytest.approx(want_trace / want_grad_sq, rel=0.03)
    # α = ‖ḡ‖² / mean‖g_i‖² → ‖G‖² / (‖G‖² + tr Σ) in the population, i.e. 1 / (1 + B_simple)
    assert s.alpha == pytest.approx(1 / (1 + want_trace / want_grad_sq), rel=0.03)


def test_two_batch_estimator_and_its_ema_agree_with_the_per_example_form():
    model, loss_fn, x, y = cases()["mlp"]
    loss, moments = gs.batch_moments(model, loss_fn, x, y)
    s = gs.statistics(loss, moments)
    g = per_example(model, loss_fn, x, y)
    # with b_small = 1 the two-batch estimator is the per-example one, in expectation over the small batch
    small_sq = float(g.pow(2).sum(1).mean())
    big_sq = float(g.mean(0).pow(2).sum())
    grad_sq, trace = gs.two_batch_noise(small_sq, big_sq, 1, len(g))
    assert grad_sq == pytest.approx(s.grad_sq_unbiased, rel=1e-9) and trace == pytest.approx(s.trace_sigma, rel=1e-9)
    ema = gs.NoiseScaleEMA(decay=0.5)
    for _ in range(3):
        ema.update(grad_sq, trace)
    assert ema.value == pytest.approx(s.noise_scale, rel=1e-12)


def test_the_small_batch_gradient_is_exact_and_leaves_no_trace():
    """‖∇L_S‖² for the two-batch estimator equals an ordinary backward over S, in train mode with BatchNorm and
    dropout; the model's running statistics, `.grad` and the random state are as before."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3)).double().train()
    x, y = torch.randn(12, 6, dtype=torch.float64), torch.randint(0, 3, (12,))
    reference, state = copy.deepcopy(model), torch.get_rng_state()
    F.cross_entropy(reference(x), y).backward()
    want = sum(float(p.grad.pow(2).sum()) for p in reference.parameters())
    torch.set_rng_state(state)  # the same dropout mask
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    assert gs.batch_grad_sq(model, F.cross_entropy, x, y) == pytest.approx(want, rel=1e-12)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert all(p.grad is None for p in model.parameters())


def test_lowrank_singular_values_match_a_dense_svd():
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(12, 40, generator=gen, dtype=torch.float64)
    a = torch.randn(12, 30, generator=gen, dtype=torch.float64)
    dense = torch.linalg.svdvals(d.T @ a)
    torch.testing.assert_close(gs.lowrank_singular_values(d, a), dense[:12], rtol=1e-10, atol=1e-10)


def test_batch_norm_in_train_mode_counts_the_shares_of_the_batch_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).double().train()
    x = torch.randn(20, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    _, moments = gs.batch_moments(model, CE, x, y)
    assert moments["1.weight"].rule == "norm"
    # the shares sum to the batch gradient: B·ḡ = Σ_i g_i, so Σ_i g_i·ḡ = B‖ḡ‖²
    for m in moments.values():
        assert float(m.dots.sum()) == pytest.approx(len(x) * float(m.mean.pow(2).sum()), rel=1e-9)


@pytest.mark.skipif(not COCKPIT.exists(), reason="needs ../shared/bench-cases/gradstats")
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_cockpit_values_on_the_fixed_benchmark_batch(name):
    """The shared case: digits standardized, permutation seed 0, first 128 examples, seed-0 init (Cockpit
    1.0.2's values, float32)."""
    ref = json.loads(COCKPIT.read_text())["models"][name]["reference_values"]
    d = load_digits()
    data = d.data.astype(np.float32)
    data = (data - data.mean(0)) / (data.std(0) + 1e-6)
    perm = np.random.RandomState(0).permutation(len(data))
    x = torch.from_numpy(data[perm][:128])
    y = torch.from_numpy(d.target[perm][:128].astype(np.int64))
    torch.manual_seed(0)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(64, 320), nn.ReLU(), nn.Linear(320, 240), nn.ReLU(), nn.Linear(240, 10))
    else:
        x = x.view(-1, 1, 8, 8)
        model = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )
    loss, moments = gs.batch_moments(model, CE, x, y)
    s = gs.statistics(loss, moments)
    assert s.loss == pytest.approx(ref["Loss"], rel=1e-6)
    assert list(s.layer_grad_norm.values()) == pytest.approx(ref["GradNorm"], rel=1e-5)
    for ours, theirs in [
        (s.norm_test, "NormTest"),
        (s.inner_test, "InnerTest"),
        (s.ortho_test, "OrthoTest"),
        (s.mean_gsnr, "MeanGSNR"),
        (s.early_stopping, "EarlyStopping"),
        (0.05 * s.cabs_trace_over_loss, "CABS"),
    ]:
        assert ours == pytest.approx(ref[theirs], rel=1e-5), theirs


def test_step_history_against_direct_computation():
    model, loss_fn, x, y = cases()["cnn"]
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = gs.StepHistory(model)
    grads, updates = [], []
    for step in range(3):
        opt.zero_grad()
        loss_fn(model(x[16 * step : 16 * (step + 1)]), y[16 * step : 16 * (step + 1)]).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        found = history.before_step()
        opt.step()
        found |= history.after_step()
        updates.append(torch.cat([(p.detach() - before[n]).flatten() for n, p in model.named_parameters()]))
        for n, p in model.named_parameters():
            assert found[f"grad/update_ratio/{n}"] == pytest.approx(
                float((p - before[n]).norm() / before[n].norm().clamp_min(1e-12)), rel=1e-9
            )
            assert found[f"grad/distance/{n}"] == pytest.approx(float((p - initial[n]).norm()), rel=1e-9)
        whole = torch.cat([b.flatten() for b in before.values()])
        assert found["grad/update_ratio"] == pytest.approx(float(updates[-1].norm() / whole.norm()), rel=1e-9)
        moved = torch.cat([(p.detach() - initial[n]).flatten() for n, p in model.named_parameters()])
        assert found["grad/distance"] == pytest.approx(float(moved.norm()), rel=1e-9)
        if step == 0:
            assert "grad/cos_previous_grad" not in found and "grad/cos_previous_update" not in found
        else:
            cos = torch.nn.functional.cosine_similarity
            assert found["grad/cos_previous_grad"] == pytest.approx(float(cos(grads[-1], grads[-2], 0)), rel=1e-9)
            assert found["grad/cos_previous_update"] == pytest.approx(float(cos(updates[-1], updates[-2], 0)), rel=1e-9)


@pytest.mark.parametrize("name", ["cnn", "conv1d", "sequence"])
def test_chunks_of_examples_give_the_same_moments(name, monkeypatch):
    model, loss_fn, x, y = cases()[name]
    _, whole = gs.batch_moments(model, loss_fn, x, y)
    monkeypatch.setattr(gs, "CHUNK_ELEMENTS", 700)  # several chunks, the last one short
    model.zero_grad()
    _, chunked = gs.batch_moments(model, loss_fn, x, y)
    for n, m in whole.items():
        for field in ("sq_norms", "dots", "coord_sq"):
            torch.testing.assert_close(getattr(chunked[n], field), getattr(m, field), rtol=1e-12, atol=1e-15)


def test_parameters_without_a_rule_follow_the_loss_the_loop_differentiated():
    """A loop that trains on another scale of the mean loss (a Hugging Face model divides by the tokens it counts):
    the embedding's per-example gradients (torch.func) are the same shares as the layer rules', read from the
    gradient at the model's output, not recomputed from loss_fn."""
    model, loss_fn, x, y = cases()["sequence"]
    scale = 0.7
    g = scale * per_example(model, loss_fn, x, y)
    with gs.Tape(model) as tape:
        (scale * loss_fn(model(x), y)).backward()
    moments = gs.moments(tape, loss_fn, x, y)
    model.zero_grad()
    assert moments["embed.weight"].rule == "torch.func"
    torch.testing.assert_close(sum(m.sq_norms for m in moments.values()), g.pow(2).sum(1), rtol=1e-9, atol=0)
    torch.testing.assert_close(sum(m.dots for m in moments.values()), g @ g.mean(0), rtol=1e-9, atol=1e-14)
