// The gradient-statistics view of a job (the `gradstats` probe): noise scale, coherence and Cockpit's tests,
// update ratios and cosines over steps, per-layer gradient norms as a heat map, and the latest per-example
// histogram and layer spectra. Its data: /jobs/<id>/metrics (prefix grad/) and /jobs/<id>/results/gradstats.
import { addExports, api, esc, plotLayout } from "../common.js";

const POLL_MS = 3000;
const HEAT_COLUMNS = 400;
const CHARTS = {
  "gradstats-noise": { title: "Gradient noise scale B_simple = tr Σ / ‖G‖²", series: ["grad/noise_scale", "grad/noise_scale_ema", "grad/noise_scale_two_batch", "grad/noise_scale_two_batch_ema"], ylog: true,
    labels: { "grad/noise_scale": "per step (per-example estimator)", "grad/noise_scale_ema": "EMAs of tr Σ and ‖G‖², divided",
      "grad/noise_scale_two_batch": "per step (two-batch-size estimator)", "grad/noise_scale_two_batch_ema": "two-batch: EMAs, divided" } },
  "gradstats-coherence": { title: "Coherence α = ‖ḡ‖² / mean ‖g_i‖², Cockpit's tests, GSNR", series: ["grad/alpha", "grad/norm_test", "grad/inner_test", "grad/ortho_test", "grad/mean_gsnr"], ylog: true },
  "gradstats-steps": { title: "Update-to-weight ratio and cosines of successive gradients and updates", series: ["grad/update_ratio", "grad/cos_previous_grad", "grad/cos_previous_update"], ylog: false },
};

// Each layer's series on common columns: its steps, or bins of steps (the largest value in each) when many.
function heat(series) {
  const distinct = [...new Set(series.flatMap((s) => s.steps))].sort((a, b) => a - b);
  if (!distinct.length) return null;
  const binned = distinct.length > HEAT_COLUMNS;
  const lo = distinct[0], width = binned ? (distinct[distinct.length - 1] - lo + 1) / HEAT_COLUMNS : 1;
  const x = binned ? Array.from({ length: HEAT_COLUMNS }, (_, c) => Math.round(lo + (c + 0.5) * width - 0.5)) : distinct;
  const column = binned ? (st) => Math.min(HEAT_COLUMNS - 1, Math.floor((st - lo) / width)) : (st) => distinct.indexOf(st);
  const z = series.map((s) => {
    const row = new Array(x.length).fill(null);
    s.steps.forEach((st, k) => {
      const v = s.values[k];
      if (v == null || v <= 0) return;
      const c = column(st);
      row[c] = row[c] == null ? Math.log10(v) : Math.max(row[c], Math.log10(v));
    });
    return row;
  });
  return { x, y: series.map((s) => s.name.replace("grad/norm/", "")), z };
}

export function gradstatsView(container, jobId, isLive) {
  container.innerHTML = `
    <section aria-labelledby="gradstats-heading">
      <h2 id="gradstats-heading">Gradient statistics</h2>
      <p class="muted" id="gradstats-info"></p>
      <div class="plots">
        ${Object.entries(CHARTS).map(([id, c]) => `<div class="chart"><div id="${id}" class="plot" role="img" aria-label="${esc(c.title)}"></div></div>`).join("")}
        <div class="chart"><div id="gradstats-layers" class="plot" role="img" aria-label="per-layer gradient norms over steps"></div></div>
        <div class="chart"><div id="gradstats-histogram" class="plot" role="img" aria-label="per-example gradient histogram"></div></div>
        <div class="chart"><div id="gradstats-spectra" class="plot" role="img" aria-label="layer gradient spectra"></div></div>
      </div>
    </section>`;
  let timer = null, stopped = false;
  const draw = async () => {
    const m = await api(`/jobs/${jobId}/metrics?prefix=grad/&max_points=1000`);
    const byName = Object.fromEntries(m.series.map((s) => [s.name, s]));
    for (const [id, chart] of Object.entries(CHARTS)) {
      const traces = chart.series.filter((n) => byName[n]).map((n) => ({ name: chart.labels?.[n] ?? n.replace("grad/", ""), x: byName[n].steps, y: byName[n].values, mode: "lines+markers", marker: { size: 3 }, connectgaps: false }));
      await Plotly.react(container.querySelector(`#${id}`), traces, plotLayout(chart.title, chart.ylog), { responsive: true, displaylogo: false });
    }
    const layers = m.series.filter((s) => s.name.startsWith("grad/norm/"));
    const h = heat(layers);
    const heatEl = container.querySelector("#gradstats-layers");
    if (h) {
      const layout = plotLayout("Per-layer gradient norm (log₁₀) over steps", false);
      layout.margin.l = 90;
      layout.yaxis = { type: "category", automargin: true };
      await Plotly.react(heatEl, [{ type: "heatmap", x: h.x, y: h.y, z: h.z, colorscale: "Viridis", colorbar: { title: { text: "log₁₀ ‖ḡ‖" } }, hoverongaps: false }], layout, { responsive: true, displaylogo: false });
      heatEl.dataset.layers = h.y.length;
    }
    const [latest] = await api(`/jobs/${jobId}/results/gradstats?last=1`);
    if (latest) {
      const d = latest.data;
      if (d.histogram) {
        const e = d.histogram.edges;
        const layout = plotLayout(`Per-example gradient elements, step ${latest.step}`, true);
        layout.annotations = [{ xref: "paper", yref: "paper", x: 1, y: 1, xanchor: "right", showarrow: false,
          text: `sample: ${d.histogram.examples} examples × ${d.histogram.elements_per_example.toLocaleString("en")} of ${d.histogram.parameters.toLocaleString("en")} coordinates` }];
        layout.xaxis.title = { text: "gradient element" };
        await Plotly.react(container.querySelector("#gradstats-histogram"), [{ type: "bar", x: e.slice(0, -1).map((v, i) => (v + e[i + 1]) / 2), y: d.histogram.counts, name: "count" }], layout, { responsive: true, displaylogo: false });
      }
      if (d.spectra) {
        const names = Object.keys(d.spectra);
        const layout = plotLayout(`Layer gradient spectra at step ${latest.step}: σ1 / Σσ (bars) and nuclear norm`, false);
        layout.xaxis.title = { text: "layer" };
        layout.yaxis2 = { overlaying: "y", side: "right", type: "log", title: { text: "nuclear norm" } };
        layout.margin.r = 60;
        await Plotly.react(container.querySelector("#gradstats-spectra"), [
          { type: "bar", name: "σ1 ratio", x: names, y: names.map((n) => d.spectra[n].sigma1_ratio) },
          { type: "scatter", mode: "markers", name: "nuclear norm", x: names, y: names.map((n) => d.spectra[n].nuclear), yaxis: "y2" },
        ], layout, { responsive: true, displaylogo: false });
      }
      const dropped = Object.entries(d.rules || {}).filter(([, r]) => r === "torch.func").map(([n]) => n);
      container.querySelector("#gradstats-info").textContent = `Batch of ${d.batch_size}; every parameter counted${dropped.length ? ` (per-example gradients by torch.func for ${dropped.join(", ")})` : ""}; ${(100 * d.dead_fraction).toFixed(1)} % of coordinates never vary (their GSNR is undefined).`;
    }
    addExports(container, `job${jobId}`);
    container.querySelector("#gradstats-noise").dataset.points = byName["grad/noise_scale"]?.steps.length ?? 0;
  };
  const poll = () => {
    clearTimeout(timer);
    if (stopped) return;
    draw().catch(console.error).finally(() => { if (!stopped && isLive()) timer = setTimeout(poll, POLL_MS); });
  };
  poll();
  return { refresh: poll, stop: () => { stopped = true; clearTimeout(timer); } };
}
