// The loss-landscape view of a job: surfaces and curves from the `landscape` probe and from analyses of kept
// checkpoints, drawn while they are being computed. Its data: /jobs/<id>/results/landscape[_analysis]; its
// files: /jobs/<id>/landscapes/<result>/export. State in the URL: ls (result id), lslog, ls3d.
import { API, api, esc, fullPlotly, plotLayout } from "../common.js";

const KINDS = ["landscape", "landscape_analysis", "trajectory_analysis", "interpolation_analysis"];
const POLL_MS = 1500;

function axisLabel(r, k) {
  if (r.plane === "pca") return `PC${k} (${(100 * r.explained_variance_ratio[k - 1]).toFixed(1)} % of the path's variance)`;
  if (r.plane === "interpolation") return `α: θ = (1 − α)·θ(${endLabel(r.from)}) + α·θ(${endLabel(r.to)})`;
  if (r.plane === "hessian") return `v${k} (Hessian eigenvector, λ${k} = ${Number(r.eigenvalues?.[k - 1]).toPrecision(4)})`;
  return `d${k} (${r.normalization}-normalized, seed ${r.seed}${k === 2 && r.orthogonalize ? ", ⊥ d1" : ""})`;
}

const endLabel = (end) => `job ${end.job} step ${end.step}`;

function describe(item) {
  const r = item.data;
  const what = r.plane === "interpolation" ? `line ${endLabel(r.from)} → ${endLabel(r.to)}`
    : r.plane === "pca" ? `${r.resolution}×${r.resolution} trajectory plane (${r.path.steps.length} checkpoints)`
    : `${r.dims === 2 ? `${r.resolution}×${r.resolution}` : `${r.resolution}-point curve`} ${r.plane} plane`;
  const from = item.kind === "landscape" ? "probe" : `analysis #${r.analysis_id ?? "…"}`;
  const live = r.partial ? ` — computing ${r.points_done}/${r.points_total}` : "";
  return `step ${item.step}: ${what} (${from})${live}`;
}

// Plotly draws z[row = y][column = x]; results hold loss[i][j] with i along xs.
const transpose = (m) => m[0].map((_, j) => m.map((row) => row[j]));
const logOf = (v) => (v != null && v > 0 ? Math.log10(v) : null);

function figure(r, options) {
  const layout = plotLayout("", false);
  const where = `${r.examples.toLocaleString("en")} training examples, batch norm ${r.batch_norm}`;
  const finite = (r.dims === 2 ? r.loss.flat() : r.loss).filter((v) => v != null);
  const low = finite.length ? Math.min(...finite) : null;
  layout.title = { text: `Loss around step ${r.step}: centre ${r.centre_loss?.toPrecision(4) ?? "…"}, min ${low?.toPrecision(4) ?? "…"} · ${where}`, font: { size: 13 } };
  if (r.dims === 1) {
    layout.xaxis.title = { text: axisLabel(r, 1) };
    layout.yaxis.title = { text: "loss" };
    layout.yaxis.type = options.log ? "log" : "linear";
    const traces = [{ name: "loss", x: r.xs, y: r.loss, mode: "lines+markers", connectgaps: false }];
    if (r.accuracy) {
      traces.push({ name: "accuracy", x: r.xs, y: r.accuracy, mode: "lines", yaxis: "y2", line: { dash: "dot" } });
      layout.yaxis2 = { overlaying: "y", side: "right", range: [0, 1], title: { text: "accuracy" } };
      layout.margin.r = 60;
    }
    if (r.plane === "interpolation") {
      layout.title.text = `Loss between ${endLabel(r.from)} and ${endLabel(r.to)} · ${where}`;
      layout.shapes = [0, 1].map((a) => ({ type: "line", x0: a, x1: a, yref: "paper", y0: 0, y1: 1, line: { dash: "dash", color: "#888" } }));
      layout.annotations = [[0, r.from], [1, r.to]].map(([a, end]) => ({ x: a, yref: "paper", y: 1, text: endLabel(end), showarrow: false, yanchor: "bottom" }));
    }
    return { traces, layout };
  }
  const z = transpose(options.log ? r.loss.map((row) => row.map(logOf)) : r.loss);
  const colorbar = { title: { text: options.log ? "log₁₀ loss" : "loss" } };
  const x = { text: axisLabel(r, 1) }, y = { text: axisLabel(r, 2) };
  if (options.surface3d) {
    layout.scene = { xaxis: { title: x }, yaxis: { title: y }, zaxis: { title: { text: options.log ? "log₁₀ loss" : "loss" } } };
    layout.margin = { t: 40, r: 0, b: 0, l: 0 };
    return { traces: [{ type: "surface", x: r.xs, y: r.ys, z, colorscale: "Viridis", colorbar, connectgaps: false }], layout };
  }
  layout.xaxis.title = x;
  layout.yaxis.title = y;
  layout.yaxis.scaleanchor = "x";
  const traces = [
    { type: "contour", name: "loss", x: r.xs, y: r.ys, z, colorscale: "Viridis", colorbar, connectgaps: false, ncontours: 30, contours: { coloring: "heatmap" } },
    { type: "scatter", name: `weights at step ${r.step}`, x: [0], y: [0], mode: "markers", marker: { symbol: "x", size: 11, color: "#cf222e" } },
  ];
  if (r.path) {
    traces.push({ type: "scatter", name: "training path (checkpoints)", x: r.path.x, y: r.path.y, mode: "lines+markers+text",
      text: r.path.steps.map((st) => `${st}`), textposition: "top center", marker: { size: 7, color: "#ff7f0e" }, line: { color: "#ff7f0e" } });
    layout.yaxis.scaleanchor = undefined;
  }
  if (r.evaluated) {
    const px = [], py = [];
    r.evaluated.forEach((row, i) => row.forEach((e, j) => { if (e) { px.push(r.xs[i]); py.push(r.ys[j]); } }));
    traces.push({ type: "scatter", name: `computed points (${px.length} of ${r.xs.length * r.ys.length}; the rest interpolated)`, x: px, y: py, mode: "markers", marker: { size: 3, color: "rgba(255,255,255,0.6)" } });
  }
  return { traces, layout };
}

export function landscapeView(container, jobId, params, onState, isLive) {
  const options = { pick: params.get("ls") || "", log: params.get("lslog") === "1", surface3d: params.get("ls3d") === "1" };
  container.innerHTML = `
    <section aria-labelledby="landscape-heading">
      <h2 id="landscape-heading">Loss landscape</h2>
      <div class="toolbar">
        <label>Surface <select id="landscape-pick"></select></label>
        <label><input type="checkbox" id="landscape-log" ${options.log ? "checked" : ""}> log colour</label>
        <label><input type="checkbox" id="landscape-3d" ${options.surface3d ? "checked" : ""}> 3-D</label>
        <span id="landscape-export" class="muted"></span>
      </div>
      <p id="landscape-info" class="muted" aria-live="polite"></p>
      <div id="landscape-plot" class="plot" role="img" aria-label="loss landscape"></div>
    </section>`;
  const pick = container.querySelector("#landscape-pick");
  const plot = container.querySelector("#landscape-plot");
  let items = [], timer = null, stopped = false;

  const selected = () => items.find((it) => String(it.id) === options.pick) ?? items[items.length - 1];
  const draw = async () => {
    const item = selected();
    if (!item) {
      container.querySelector("#landscape-info").textContent = isLive() ? "waiting for the first surface…" : "no surface yet";
      return;
    }
    const r = { ...item.data, step: item.step };
    const { traces, layout } = figure(r, options);
    plot.dataset.result = item.id;
    plot.dataset.partial = r.partial ? "1" : "0";
    if (options.surface3d && !plot.dataset.full) {
      await fullPlotly();
      Plotly.purge(plot);  // drawn from now on by the full bundle
      plot.dataset.full = "1";
    }
    await Plotly.react(plot, traces, layout, { responsive: true, displaylogo: false, toImageButtonOptions: { filename: `job${jobId}-landscape-${item.id}` } });
    const rate = r.points_per_s ? `, ${r.points_per_s.toFixed(0)} points/s` : "";
    const span = r.span == null ? "" : `; span ±${Number(r.span).toPrecision(3)}${r.span_y ? ` × ±${Number(r.span_y).toPrecision(3)}` : ""}`;
    container.querySelector("#landscape-info").textContent = `${r.indexing}${span}; ${r.points_done} of ${r.points_total} points computed${rate}${r.partial ? " (still computing)" : ""}.`;
    container.querySelector("#landscape-export").innerHTML = r.partial ? "" : "Export " + ["csv", "json", "npz", "vtk"].map((f) =>
      `<a class="landscape-export" data-format="${f}" href="${API}/jobs/${jobId}/landscapes/${item.id}/export?format=${f}" download>${f.toUpperCase()}</a>`).join(" ");
  };
  const load = async () => {
    const lists = await Promise.all(KINDS.map((kind) => api(`/jobs/${jobId}/results/${kind}`).then((rows) => rows.map((row) => ({ ...row, kind })))));
    items = lists.flat().sort((a, b) => a.step - b.step || a.id - b.id);
    pick.innerHTML = items.map((it) => `<option value="${it.id}" ${String(it.id) === options.pick ? "selected" : ""}>${esc(describe(it))}</option>`).join("");
    if (!options.pick && items.length) pick.value = String(items[items.length - 1].id);
    await draw();
  };
  const poll = () => {
    clearTimeout(timer);
    if (stopped) return;
    load().catch(console.error).finally(() => {
      if (!stopped && (isLive() || items.some((it) => it.data.partial))) timer = setTimeout(poll, POLL_MS);
    });
  };
  pick.addEventListener("change", () => { options.pick = pick.value; onState({ ls: pick.value }); draw().catch(console.error); });
  container.querySelector("#landscape-log").addEventListener("change", (e) => { options.log = e.target.checked; onState({ lslog: options.log ? "1" : "" }); draw().catch(console.error); });
  container.querySelector("#landscape-3d").addEventListener("change", (e) => { options.surface3d = e.target.checked; onState({ ls3d: options.surface3d ? "1" : "" }); draw().catch(console.error); });
  poll();
  return { refresh: poll, stop: () => { stopped = true; clearTimeout(timer); } };
}
