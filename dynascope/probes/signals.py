"""The signals probe: per-example losses on a fixed probe set at every step, and opposing pairs found in them.

At each step it takes the step's per-example losses (before the update); a pair a search found is reported once
the steps after it show its groups' losses swinging out of phase."""

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from dynascope.analysis import signals as sg
from dynascope.probes.base import Batch, Calls, Output, Probe, Run
from dynascope.probes.hessian import Sharpness
from dynascope.probes.samples import stratified_sample
from dynascope.results import HessianAlignment, SignalsGroup, SignalsPair
from dynascope.settings import SignalsProbe

EXAMPLES_SHOWN = 8
SAMPLE_SEED = 4  # the probe set's rows: run seed + this
CHUNK = 1024  # probe-set examples per forward pass


@dataclass
class _Pending:
    step: int
    pair: sg.Pair
    alignment: HessianAlignment | None  # |cos(top Hessian eigenvector, ĝ_A − ĝ_B)|, and a random direction's
    trigger: list[str]  # what made the search: "schedule", "loss rise", "sharpness"


class Signals(Probe):
    name = "signals"
    Settings = SignalsProbe

    def __init__(self, cfg: SignalsProbe, run: Run) -> None:
        super().__init__(cfg, run)
        # Under full-batch training the probe set is the training set, whose losses the training forward gives.
        size = len(run.y_train) if run.full_batch else cfg.probe_examples
        self.rows = stratified_sample(run.y_train, size, run.seed + SAMPLE_SEED).to(run.x_train.device)
        self.x, self.y = run.x_train[self.rows], run.y_train[self.rows]
        self.settings = sg.DetectSettings(cfg.top_k, cfg.z_min, cut=cfg.cut, min_size=cfg.min_size, tau=cfg.tau, z_expand=cfg.z_expand)
        self.history: deque[tuple[int, np.ndarray]] = deque(maxlen=2 * cfg.window + 2)
        self.pending: list[_Pending] = []
        self.tracked: list[tuple[int, sg.Pair]] = []
        self.last_search: int | None = None
        self.rejected = 0
        self.previous_mean = float("inf")
        self.sharpness_seen: int | None = None  # the step of the last Hessian measurement looked at
        self.was_above = False
        self.sharpness_due = False  # it crossed its threshold: search at the next step the gap allows
        self.mean_input = run.x_train.float().mean(0)

    def due(self, step: int) -> bool:
        return False  # no scheduled measurement: it follows every step

    def _losses(self, batch: Batch) -> np.ndarray:
        if self.run.full_batch:  # the batch is the whole training set in some order; the probe set is it in row order
            now = np.empty(len(self.rows), dtype=np.float32)
            now[batch.idx.cpu().numpy()] = batch.losses.float().cpu().numpy()
            return now
        model = self.run.model
        training = model.training
        model.eval()
        try:
            with torch.no_grad():  # in chunks: the probe set's activations never all at once
                parts = [
                    self.run.example_loss(model(self.x[i : i + CHUNK]).float(), self.y[i : i + CHUNK]) for i in range(0, len(self.y), CHUNK)
                ]
                return torch.cat(parts).cpu().numpy()
        finally:
            model.train(training)

    def after_forward(self, batch: Batch) -> Output:
        step, now = batch.step, self._losses(batch)
        mean = float(now.sum(dtype=np.float64)) / len(now)
        output = Output({"signals/probe_loss": mean})
        previous = self.history[-1] if self.history else None
        self.history.append((step, now))
        self._watch_sharpness()
        if previous is not None:
            delta = now - previous[1]
            output.metrics["signals/heavy_tail"] = sg.heavy_tail_share(delta)
            trigger = self._trigger(step, mean)
            if trigger:
                self.last_search, self.sharpness_due = step, False
                found = sg.detect(
                    self.run.model, self.run.example_loss, self.x, self.y, torch.from_numpy(delta).to(self.x.device), self.settings
                )
                self.pending += [_Pending(step, p, self._alignment(p), trigger) for p in found.pairs]
                output.metrics["signals/outliers"] = float(len(found.outliers))
        self.previous_mean = mean
        if self.pending:
            output.results += self._score(step)
        for k, (_, pair) in enumerate(self.tracked):
            output.metrics[f"signals/pair{k}/A"] = float(now[pair.a].mean())
            output.metrics[f"signals/pair{k}/B"] = float(now[pair.b].mean())
        return output

    def _trigger(self, step: int, mean: float) -> list[str]:
        """Why a search is due at this step (nothing when none is, or when the last one was too recent)."""
        if self.last_search is not None and step - self.last_search < self.cfg.min_gap:
            return []
        rose = self.cfg.on_rise and mean > self.previous_mean
        reasons = (("schedule", step % self.cfg.detect_every == 0), ("loss rise", rose), ("sharpness", self.sharpness_due))
        return [name for name, on in reasons if on]

    def _watch_sharpness(self) -> None:
        """Take in the Hessian probe's newest measurement: the first at or above its stability threshold (after
        one below, or as the first) makes a search due — the edge of stability is where opposing signals show."""
        latest = self.run.board.latest(Sharpness)
        if latest is None or latest.value is None or latest.step == self.sharpness_seen:
            return
        self.sharpness_seen = latest.step
        above = latest.value >= latest.threshold
        self.sharpness_due |= self.cfg.on_sharpness and above and not self.was_above
        self.was_above = above

    def _score(self, step: int, final: bool = False) -> list[tuple[int, SignalsPair]]:
        """Score the pending pairs whose window has passed (at the end of training: with what there is); the
        pairs that pass, as documents at the step of the search that found them."""
        waiting, reports = [], []
        for item in self.pending:
            if step < item.step + self.cfg.window and not final:
                waiting.append(item)
                continue
            window = np.array([v for s, v in self.history if abs(s - item.step) <= self.cfg.window])
            score = sg.antiphase(window, item.pair.a, item.pair.b) if len(window) >= 4 else None
            item.pair.antiphase = score
            if score is not None and score <= self.cfg.antiphase_max and len(self.tracked) < self.cfg.max_pairs:
                self.tracked.append((item.step, item.pair))
                reports.append((item.step, self._document(item, window)))
            else:
                self.rejected += 1
        self.pending = waiting
        return reports

    def _alignment(self, pair: sg.Pair) -> HessianAlignment | None:
        """How much of the Hessian's sharpest direction the pair's disagreement explains (the Hessian probe's
        latest top eigenvector), against a random direction's |cos| as a baseline."""
        latest = self.run.board.latest(Sharpness)
        if latest is None or pair.direction is None:
            return None
        vector = latest.top_eigenvector
        u = pair.direction.to(vector)
        noise = torch.randn(len(u), generator=torch.Generator().manual_seed(latest.step), dtype=u.dtype).to(u.device)
        cos = torch.nn.functional.cosine_similarity
        return HessianAlignment(
            eigenvector_step=latest.step, abs_cos=float(cos(u, vector, dim=0).abs()), random_abs_cos=float(cos(u, noise, dim=0).abs())
        )

    def finish(self, total: int, calls: Calls) -> Output:
        return Output(results=self._score(total, final=True))

    def _document(self, item: _Pending, window: np.ndarray) -> SignalsPair:
        pair = item.pair
        sides = {
            side: self._group(core, star, moved, intra, window)
            for side, core, star, moved, intra in (
                ("A", pair.a, pair.a_star, pair.mean_delta_a, pair.intra_a),
                ("B", pair.b, pair.b_star, pair.mean_delta_b, pair.intra_b),
            )
        }
        return SignalsPair(
            pair=len(self.tracked) - 1,
            cos=pair.cos,
            antiphase=pair.antiphase,
            window=self.cfg.window,
            hessian_alignment=item.alignment,
            trigger=item.trigger,
            probe_examples=len(self.rows),
            steps=[s for s, _ in self.history if abs(s - item.step) <= self.cfg.window],
            **sides,
        )

    def _group(self, core: list[int], star: list[int], moved: float, intra: float | None, window: np.ndarray) -> SignalsGroup:
        members = sorted(set(core) | set(star))
        rows, shown = self.rows.cpu(), self.x[core[:EXAMPLES_SHOWN]].cpu()
        labels = self.y[members].cpu()
        group = SignalsGroup(
            core=rows[core].tolist(),
            expanded=rows[members].tolist(),
            mean_delta=moved,
            intra_cos=intra,
            loss=window[:, core].mean(1).tolist(),
            loss_expanded=window[:, members].mean(1).tolist(),
            examples=shown.tolist(),
            classes=None if labels.is_floating_point() else torch.bincount(labels.flatten()).tolist(),
        )
        if self.run.vocab is None:  # the shared feature: the group's mean input minus the training set's
            group.mean_input_minus_all = (self.x[members].float().mean(0).cpu() - self.mean_input.cpu()).tolist()
        else:  # token ids mean nothing on average: the text itself
            group.snippets = ["".join(self.run.vocab[t] for t in row) for row in shown.tolist()]
        return group
