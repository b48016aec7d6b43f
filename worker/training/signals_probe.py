"""The signals probe: per-example losses on a fixed probe set at every step, and opposing pairs found in them."""

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from backend.spec import SignalsProbe
from worker.analysis import signals as sg
from worker.training.data import stratified_sample
from worker.training.optim import LossFn


EXAMPLES_SHOWN = 8


@dataclass
class _Pending:
    step: int
    pair: sg.Pair
    alignment: dict[str, float] | None  # |cos(top Hessian eigenvector, ĝ_A − ĝ_B)|, and a random direction's
    trigger: list[str]  # what made the search: "schedule", "loss rise", "sharpness"


class SignalsTracker:
    """Call `observe()` at each training step with that step's per-example losses (before the update); it
    returns the step's metrics, and `reports` collects the pairs whose anti-phase score passed, as result
    documents."""

    name = "signals"

    def __init__(
        self,
        cfg: SignalsProbe,
        each: LossFn,
        x_train: Tensor,
        y_train: Tensor,
        seed: int,
        full_batch: bool,
        top_eigenvector: Callable[[], tuple[int, Tensor] | None] = lambda: None,
        vocab: str | None = None,
        sharpness: Callable[[], tuple[int, float, float] | None] = lambda: None,
    ) -> None:
        self.cfg, self.each, self.top_eigenvector, self.vocab, self.sharpness = cfg, each, top_eigenvector, vocab, sharpness
        # Under full-batch training the probe set is the training set, whose losses the training forward gives.
        size = len(y_train) if full_batch else cfg.probe_examples
        self.rows = stratified_sample(y_train, size, seed + 4).to(x_train.device)
        self.x, self.y = x_train[self.rows], y_train[self.rows]
        self.reuse = full_batch
        self.settings = sg.DetectSettings(cfg.top_k, cfg.z_min, cut=cfg.cut, min_size=cfg.min_size, tau=cfg.tau, z_expand=cfg.z_expand)
        self.history: deque[tuple[int, np.ndarray]] = deque(maxlen=2 * cfg.window + 2)
        self.pending: list[_Pending] = []
        self.tracked: list[tuple[int, sg.Pair]] = []
        self.reports: list[tuple[int, dict[str, Any]]] = []
        self.last_search: int | None = None
        self.rejected = 0
        self.previous_mean = float("inf")
        self.sharpness_seen: int | None = None  # the step of the last Hessian measurement looked at
        self.was_above = False
        self.sharpness_due = False  # it crossed its threshold: search at the next step the gap allows
        self.seconds = 0.0
        self.mean_input = x_train.float().mean(0)

    def _losses(self, model: nn.Module, losses: Tensor, idx: Tensor) -> np.ndarray:
        if self.reuse:  # the batch is the whole training set in some order; the probe set is it in row order
            now = np.empty(len(self.rows), dtype=np.float32)
            now[idx.cpu().numpy()] = losses.float().cpu().numpy()
            return now
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return self.each(model(self.x).float(), self.y).cpu().numpy()
        finally:
            model.train(training)

    def observe(self, step: int, model: nn.Module, losses: Tensor, idx: Tensor) -> dict[str, float]:
        """`losses`: the training step's per-example losses of the batch `idx` (the rows of the training set)."""
        started = time.perf_counter()
        now = self._losses(model, losses, idx)
        mean = float(now.sum(dtype=np.float64)) / len(now)
        metrics = {"signals/probe_loss": mean}
        previous = self.history[-1] if self.history else None
        self.history.append((step, now))
        self._watch_sharpness()
        if previous is not None:
            delta = now - previous[1]
            metrics["signals/heavy_tail"] = sg.heavy_tail_share(delta)
            rose = self.cfg.on_rise and mean > self.previous_mean
            spaced = self.last_search is None or step - self.last_search >= self.cfg.min_gap
            reasons = (("schedule", step % self.cfg.detect_every == 0), ("loss rise", rose), ("sharpness", self.sharpness_due))
            trigger = [name for name, on in reasons if on]
            if spaced and trigger:
                self.last_search, self.sharpness_due = step, False
                found = sg.detect(model, self.each, self.x, self.y, torch.from_numpy(delta).to(self.x.device), self.settings)
                self.pending += [_Pending(step, p, self._alignment(p), trigger) for p in found.pairs]
                metrics["signals/outliers"] = float(len(found.outliers))
        self.previous_mean = mean
        if self.pending:
            self._score(step)
        for k, (_, pair) in enumerate(self.tracked):
            metrics[f"signals/pair{k}/A"] = float(now[pair.a].mean())
            metrics[f"signals/pair{k}/B"] = float(now[pair.b].mean())
        self.seconds += time.perf_counter() - started
        return metrics

    def _watch_sharpness(self) -> None:
        """Take in the Hessian probe's newest measurement: the first at or above its stability threshold (after
        one below, or as the first) makes a search due — the edge of stability is where opposing signals show."""
        latest = self.sharpness()
        if latest is None or latest[0] == self.sharpness_seen:
            return
        self.sharpness_seen = latest[0]
        above = latest[1] >= latest[2]
        self.sharpness_due |= self.cfg.on_sharpness and above and not self.was_above
        self.was_above = above

    def _score(self, step: int, final: bool = False) -> None:
        """Score the pending pairs whose window has passed (at the end of training: with what there is)."""
        waiting = []
        for item in self.pending:
            if step < item.step + self.cfg.window and not final:
                waiting.append(item)
                continue
            window = np.array([v for s, v in self.history if abs(s - item.step) <= self.cfg.window])
            score = sg.antiphase(window, item.pair.a, item.pair.b) if len(window) >= 4 else None
            item.pair.antiphase = score
            if score is not None and score <= self.cfg.antiphase_max and len(self.tracked) < self.cfg.max_pairs:
                self.tracked.append((item.step, item.pair))
                self.reports.append((item.step, self._document(item, window)))
            else:
                self.rejected += 1
        self.pending = waiting

    def _alignment(self, pair: sg.Pair) -> dict[str, float] | None:
        """How much of the Hessian's sharpest direction the pair's disagreement explains (the Hessian probe's
        latest top eigenvector), against a random direction's |cos| as a baseline."""
        latest = self.top_eigenvector()
        if latest is None or pair.direction is None:
            return None
        at, vector = latest
        u = pair.direction.to(vector)
        noise = torch.randn(len(u), generator=torch.Generator().manual_seed(at), dtype=u.dtype).to(u.device)
        cos = torch.nn.functional.cosine_similarity
        return {"eigenvector_step": at, "abs_cos": float(cos(u, vector, dim=0).abs()), "random_abs_cos": float(cos(u, noise, dim=0).abs())}

    def finish(self, step: int) -> None:
        self._score(step, final=True)

    def _document(self, item: _Pending, window: np.ndarray) -> dict[str, Any]:
        pair, rows = item.pair, self.rows.cpu()
        out: dict[str, Any] = {
            "pair": len(self.tracked) - 1, "cos": pair.cos, "antiphase": pair.antiphase, "window": self.cfg.window,
            "hessian_alignment": item.alignment, "trigger": item.trigger,
            "probe_examples": len(self.rows), "steps": [s for s, _ in self.history if abs(s - item.step) <= self.cfg.window],
        }  # fmt: skip
        for side, core, star, moved in (("A", pair.a, pair.a_star, pair.mean_delta_a), ("B", pair.b, pair.b_star, pair.mean_delta_b)):
            members = sorted(set(core) | set(star))
            labels = self.y[members].cpu()
            group: dict[str, Any] = {
                "core": rows[core].tolist(), "expanded": rows[members].tolist(), "mean_delta": moved,
                "intra_cos": pair.intra_a if side == "A" else pair.intra_b,
                "loss": window[:, core].mean(1).tolist(), "loss_expanded": window[:, members].mean(1).tolist(),
                # a few of its examples as they are (images, table rows, token ids)
                "examples": self.x[core[:EXAMPLES_SHOWN]].cpu().tolist(),
            }  # fmt: skip
            if self.vocab is None:  # the shared feature: the group's mean input minus the training set's
                group["mean_input_minus_all"] = (self.x[members].float().mean(0).cpu() - self.mean_input.cpu()).tolist()
            else:  # token ids mean nothing on average: the text itself
                group["snippets"] = ["".join(self.vocab[t] for t in row) for row in self.x[core[:EXAMPLES_SHOWN]].cpu().tolist()]
            if not labels.is_floating_point():
                group["classes"] = torch.bincount(labels.flatten()).tolist()
            out[side] = group
        return out
