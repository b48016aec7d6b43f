// A learning-rate sweep as Wortsman et al. (2023) read it: final loss against learning rate (log x), a curve per
// value of another swept field with its LR sensitivity in the legend, and the largest attention logit at the end
// beside it. Data: /sweeps/<id>/sensitivity (the server computes every number). State in the URL: sby.
import { PLOT_CONFIG, addExports, api, esc, plotLayout } from "../common.js";

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

export function sensitivityView(container, sweepId, params, onState) {
  const state = { by: params.get("sby") ?? null };
  container.innerHTML = `
    <section aria-labelledby="sensitivity-heading">
      <h2 id="sensitivity-heading">Learning-rate sensitivity of sweep ${esc(sweepId)}</h2>
      <div class="toolbar"><label>Curves by <select id="sensitivity-by"></select></label></div>
      <p class="muted" id="sensitivity-info" aria-live="polite"></p>
      <div class="plots">
        <div class="chart"><div id="sensitivity-loss" class="plot" role="img" aria-label="final loss against learning rate"></div></div>
        <div class="chart"><div id="sensitivity-logit" class="plot" role="img" aria-label="largest attention logit at the end against learning rate"></div></div>
      </div>
    </section>`;
  const info = container.querySelector("#sensitivity-info");
  const draw = async () => {
    const sweep = await api(`/sweeps/${sweepId}`);
    const p = new URLSearchParams();
    if (state.by !== null) p.set("by", state.by);
    let data;
    try {
      data = await api(`/sweeps/${sweepId}/sensitivity?${p}`);
    } catch (err) {
      for (const el of container.querySelectorAll(".plots, .toolbar")) el.style.display = "none";
      info.textContent = `No learning-rate sensitivity: ${err.body?.detail?.[0]?.msg ?? String(err)}`;
      return;
    }
    const fields = Object.keys(sweep.grid).filter((f) => f !== data.lr);
    container.querySelector("#sensitivity-by").innerHTML = [`<option value="">(none)</option>`]
      .concat(fields.map((f) => `<option ${f === data.by ? "selected" : ""}>${esc(f)}</option>`)).join("");
    const name = (c) => (data.by ? `${data.by} = ${c.value}` : "all runs");
    const loss = [], logit = [];
    data.curves.forEach((c, i) => {
      const color = COLORS[i % COLORS.length];
      const hover = c.lrs.map((_, k) => `${c.runs[k]} run(s), ${c.diverged[k]} diverged; jobs ${c.jobs[k].join(", ")}`);
      loss.push({ name: `${name(c)}: LR sensitivity ${c.sensitivity.toPrecision(3)}`, x: c.lrs, y: c.capped, mode: "lines+markers",
        line: { color }, customdata: hover, meta: { sensitivity: c.sensitivity, value: c.value },
        hovertemplate: "lr %{x:.3g}: min(ℓ, ℓ₀) %{y:.4g}<br>%{customdata}<extra></extra>" });
      loss.push({ name: `ℓ₀ (${name(c)})`, x: [c.lrs[0], c.lrs[c.lrs.length - 1]], y: [c.initial, c.initial], mode: "lines",
        line: { color, dash: "dot" }, hoverinfo: "skip" });
      logit.push({ name: name(c), x: c.lrs, y: c.attention_logit, mode: "lines+markers", line: { color }, connectgaps: false });
    });
    const lossLayout = plotLayout(`Final ${data.series} against learning rate`, false);
    lossLayout.xaxis = { title: { text: data.lr }, type: "log" };
    const logitLayout = plotLayout("Largest attention logit at the end", true);
    logitLayout.xaxis = { title: { text: data.lr }, type: "log" };
    const lossEl = container.querySelector("#sensitivity-loss"), logitEl = container.querySelector("#sensitivity-logit");
    await Plotly.react(lossEl, loss, lossLayout, PLOT_CONFIG);
    await Plotly.react(logitEl, logit, logitLayout, PLOT_CONFIG);
    lossEl.dataset.by = data.by ?? "";
    const noLogits = data.curves.every((c) => c.attention_logit.every((v) => v == null));
    info.textContent = `${data.definition}; each run's loss is capped at its ℓ₀ (a diverged run counts as ℓ₀), other swept fields are averaged.`
      + (data.pending ? ` ${data.pending} run(s) not ended yet are left out.` : "")
      + (noLogits ? " No attention logits: add the instability probe to the sweep's spec." : "");
    addExports(container, `sweep${sweepId}-sensitivity`);
  };
  container.querySelector("#sensitivity-by").addEventListener("change", (e) => {
    state.by = e.target.value;
    onState({ sby: state.by });
    draw().catch(console.error);
  });
  draw().catch(console.error);
}
