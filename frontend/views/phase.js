// A sweep as a phase diagram: one number per job (final/max/min of a series, or diverged) on the grid of two
// swept fields, as a heat map whose cells open their job. Data: /sweeps/<id>/phase. State in the URL:
// metric, px, py.
import { PLOT_CONFIG, addExports, api, esc, themed } from "../common.js";

const PRESETS = ["final:val/loss", "final:val/accuracy", "final:train/loss", "max:hessian/sharpness", "max:train/loss", "diverged"];

export function phaseView(container, sweepId, params, onState) {
  const state = { metric: params.get("metric") || PRESETS[0], x: params.get("px") || "", y: params.get("py") || "" };
  container.innerHTML = `
    <section aria-labelledby="phase-heading">
      <h2 id="phase-heading">Phase diagram of sweep ${esc(sweepId)}</h2>
      <div class="toolbar">
        <label>Value <input id="phase-metric" list="phase-presets" value="${esc(state.metric)}" size="24"></label>
        <datalist id="phase-presets">${PRESETS.map((p) => `<option value="${p}">`).join("")}</datalist>
        <label>Across <select id="phase-x"></select></label>
        <label>Down <select id="phase-y"></select></label>
        <button id="phase-draw">Draw</button>
        <span class="muted" id="phase-info" aria-live="polite"></span>
      </div>
      <div class="chart"><div id="phase-plot" class="plot" role="img" aria-label="phase diagram"></div></div>
    </section>`;
  const el = container.querySelector("#phase-plot");
  const draw = async () => {
    const sweep = await api(`/sweeps/${sweepId}`);
    const fields = Object.keys(sweep.grid);
    const fill = (id, chosen, none) => {
      container.querySelector(id).innerHTML = (none ? [`<option value="">(none)</option>`] : [])
        .concat(fields.map((f) => `<option ${f === chosen ? "selected" : ""}>${esc(f)}</option>`)).join("");
    };
    state.metric = container.querySelector("#phase-metric").value.trim() || PRESETS[0];
    const p = new URLSearchParams({ metric: state.metric });
    if (state.x) p.set("x", state.x);
    if (state.y) p.set("y", state.y);
    let phase;
    try {
      phase = await api(`/sweeps/${sweepId}/phase?${p}`);
    } catch (err) {
      container.querySelector("#phase-info").textContent = err.body?.detail?.[0]?.msg ?? String(err);
      return;
    }
    fill("#phase-x", phase.x, false);
    fill("#phase-y", phase.y ?? "", true);
    onState({ metric: state.metric, px: state.x, py: state.y });
    await Plotly.react(el, phase.figure.data, themed(phase.figure.layout), PLOT_CONFIG);
    el.dataset.metric = phase.metric;
    addExports(container, `sweep${sweepId}`);
    const missing = phase.z.flat().filter((v) => v == null).length;
    container.querySelector("#phase-info").textContent = missing ? `${missing} cell(s) without a value yet` : "";
    el.removeAllListeners?.("plotly_click");
    el.on("plotly_click", (event) => {
      const ids = event.points?.[0]?.customdata;
      if (ids?.length) location.hash = `#/jobs/${ids[0]}`;
    });
  };
  container.querySelector("#phase-x").addEventListener("change", (e) => { state.x = e.target.value; draw().catch(console.error); });
  container.querySelector("#phase-y").addEventListener("change", (e) => { state.y = e.target.value; draw().catch(console.error); });
  container.querySelector("#phase-draw").addEventListener("click", () => draw().catch(console.error));
  draw().catch(console.error);
}
