// A learning-rate sweep as Wortsman et al. (2023) read it: final loss against learning rate (log x), a curve per
// value of another swept field with its LR sensitivity in the legend, and the largest attention logit at the end
// beside it. Data: /sweeps/<id>/sensitivity (the server computes every number and describes both figures). State in the URL: sby.
import { PLOT_CONFIG, addExports, api, esc, themed } from "../common.js";

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
    const [lossFigure, logitFigure] = data.figures;
    const lossEl = container.querySelector("#sensitivity-loss"), logitEl = container.querySelector("#sensitivity-logit");
    await Plotly.react(lossEl, lossFigure.data, themed(lossFigure.layout), PLOT_CONFIG);
    await Plotly.react(logitEl, logitFigure.data, themed(logitFigure.layout), PLOT_CONFIG);
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
