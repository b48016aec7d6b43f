// The opposing-signals view of a job (the `signals` probe): the probe set's loss with the steps where a pair
// was found, the heavy-tail share of |Δℓ|, and per pair its two groups' losses over training (with even/odd
// envelopes: the swings have period 2), their shared feature and classes. Data: /jobs/<id>/metrics (prefix
// signals/) and /jobs/<id>/results/signals.
import { addExports, api, esc, plotLayout } from "../common.js";

const POLL_MS = 3000;
const THUMBS_PER_ROW = 4;
const TRIGGERS = { schedule: "schedule", "loss rise": "a rise of the loss", sharpness: "the sharpness reaching 2/lr" };

// Upper and lower envelopes of a period-2 oscillation: the max and min of each pair of neighbours.
function envelopes(steps, values) {
  const upper = [], lower = [];
  for (let i = 0; i < values.length; i++) {
    const near = [values[i - 1], values[i], values[i + 1]].filter((v) => v != null);
    upper.push(near.length ? Math.max(...near) : null);
    lower.push(near.length ? Math.min(...near) : null);
  }
  return { x: steps, upper, lower };
}

// A group's mean loss: the window around its search (kept with the pair), then the steps tracked after it.
function curve(windowSteps, windowValues, tracked) {
  const steps = [...(windowSteps || [])], values = [...(windowValues || [])];
  const last = steps.length ? steps[steps.length - 1] : -Infinity;
  (tracked?.steps || []).forEach((st, i) => { if (st > last) { steps.push(st); values.push(tracked.values[i]); } });
  return { steps, values };
}

// Images (2-D arrays) as one grid, `perRow` to a row, a blank row/column between neighbours.
function tile(images, perRow) {
  const h = images[0].length, w = images[0][0].length, cols = Math.min(perRow, images.length);
  const z = [];
  for (let start = 0; start < images.length; start += cols) {
    if (start) z.push(new Array(cols * (w + 1) - 1).fill(null));
    for (let r = 0; r < h; r++) {
      const row = [];
      for (let i = start; i < start + cols; i++) {
        if (i > start) row.push(null);
        row.push(...(images[i] ? images[i][r] : new Array(w).fill(null)));
      }
      z.push(row);
    }
  }
  return z;
}

function isImage(feature) {
  return Array.isArray(feature) && Array.isArray(feature[0]) && Array.isArray(feature[0][0]);
}

export function signalsView(container, jobId, isLive) {
  container.innerHTML = `
    <section aria-labelledby="signals-heading">
      <h2 id="signals-heading">Opposing signals</h2>
      <p class="muted" id="signals-info"></p>
      <div class="plots">
        <div class="chart"><div id="signals-loss" class="plot" role="img" aria-label="probe loss with the steps where pairs were found"></div></div>
        <div class="chart"><div id="signals-tail" class="plot" role="img" aria-label="heavy-tail share of loss changes"></div></div>
      </div>
      <div id="signals-pairs"></div>
    </section>`;
  let timer = null, stopped = false, drawnPairs = -1;
  const draw = async () => {
    const [m, pairs] = await Promise.all([api(`/jobs/${jobId}/metrics?prefix=signals/&max_points=2000`), api(`/jobs/${jobId}/results/signals`)]);
    const byName = Object.fromEntries(m.series.map((s) => [s.name, s]));
    const loss = byName["signals/probe_loss"];
    const lossLayout = plotLayout("Probe-set loss; dotted: steps where a reported pair was found", true);
    lossLayout.shapes = pairs.map((p) => ({ type: "line", x0: p.step, x1: p.step, yref: "paper", y0: 0, y1: 1, line: { dash: "dot", color: "#cf222e" } }));
    await Plotly.react(container.querySelector("#signals-loss"), loss ? [{ name: "probe loss", x: loss.steps, y: loss.values, mode: "lines" }] : [], lossLayout, { responsive: true, displaylogo: false });
    const tail = byName["signals/heavy_tail"];
    await Plotly.react(container.querySelector("#signals-tail"), tail ? [{ name: "share of Σ|Δℓ_i| in the top 1 %", x: tail.steps, y: tail.values, mode: "lines" }] : [],
      plotLayout("Heavy tail: share of Σ|Δℓ_i| carried by the top 1 % of examples", false), { responsive: true, displaylogo: false });
    container.querySelector("#signals-info").textContent = pairs.length
      ? `${pairs.length} pair${pairs.length === 1 ? "" : "s"} of groups pulling against each other, each confirmed by its groups' losses swinging out of phase (anti-phase score ≤ the threshold); the most opposed pair (lowest cos) first.`
      : "No opposing pair confirmed yet.";
    container.querySelector("#signals-loss").dataset.pairs = pairs.length;
    addExports(container, `job${jobId}`);
    if (pairs.length === drawnPairs && !isLive()) return;
    drawnPairs = pairs.length;
    const ranked = [...pairs].sort((a, b) => a.data.cos - b.data.cos);
    const box = container.querySelector("#signals-pairs");
    box.innerHTML = ranked.map((p, k) => `
      <h3>Pair ${p.data.pair + 1}, found at step ${p.step}${p.data.trigger ? ` (search on ${p.data.trigger.map((t) => TRIGGERS[t] || t).join(", ")})` : ""}: cos(ḡ_A, ḡ_B) = ${p.data.cos.toFixed(2)}, anti-phase ${p.data.antiphase.toFixed(2)}</h3>
      ${p.data.hessian_alignment ? `<p class="muted">|cos(top Hessian eigenvector at step ${p.data.hessian_alignment.eigenvector_step}, ĝ_A − ĝ_B)| = ${p.data.hessian_alignment.abs_cos.toFixed(3)} (a random direction: ${p.data.hessian_alignment.random_abs_cos.toFixed(3)})</p>` : ""}
      <div class="plots">
        <div class="chart"><div id="pair-${k}-curves" class="plot pair-curves" role="img" aria-label="group losses of pair ${k + 1}"></div></div>
        <div class="chart"><div id="pair-${k}-classes" class="plot" role="img" aria-label="classes of pair ${k + 1}"></div></div>
        ${["A", "B"].map((g) => `<div class="chart"><div id="pair-${k}-${g}-examples" class="plot thumbs" role="img" aria-label="examples of group ${g}"></div></div>`).join("")}
        ${["A", "B"].map((g) => `<div class="chart"><div id="pair-${k}-${g}-feature" class="plot" role="img" aria-label="shared feature of group ${g}"></div>
          <p class="muted">Group ${g}: ${p.data[g].core.length} core examples, ${p.data[g].expanded.length} with those that side with them; rows ${esc(p.data[g].core.slice(0, 12).join(", "))}${p.data[g].core.length > 12 ? ", …" : ""}</p></div>`).join("")}
      </div>`).join("");
    for (const [k, p] of ranked.entries()) {
      const traces = [];
      for (const [g, color] of [["A", "#1f77b4"], ["B", "#ff7f0e"]]) {
        const s = curve(p.data.steps, p.data[g].loss, byName[`signals/pair${p.data.pair}/${g}`]);
        if (!s.steps.length) continue;
        const env = envelopes(s.steps, s.values);
        traces.push({ name: `group ${g}`, x: s.steps, y: s.values, mode: "lines", line: { color, width: 1 }, opacity: 0.35 });
        traces.push({ name: `${g} upper envelope`, x: env.x, y: env.upper, mode: "lines", line: { color } });
        traces.push({ name: `${g} lower envelope`, x: env.x, y: env.lower, mode: "lines", line: { color, dash: "dot" } });
      }
      const curveLayout = plotLayout("Group losses around the search and after it (raw and even/odd envelopes)", true);
      curveLayout.shapes = [{ type: "line", x0: p.step, x1: p.step, yref: "paper", y0: 0, y1: 1, line: { dash: "dot", color: "#888" } }];
      await Plotly.react(container.querySelector(`#pair-${k}-curves`), traces, curveLayout, { responsive: true, displaylogo: false });
      const classes = ["A", "B"].map((g) => ({ type: "bar", name: `group ${g}`, x: (p.data[g].classes || []).map((_, c) => `class ${c}`), y: p.data[g].classes || [] }));
      const classLayout = plotLayout("Classes in each group (expanded)", false);
      classLayout.xaxis = { title: { text: "class" } };
      await Plotly.react(container.querySelector(`#pair-${k}-classes`), classes, classLayout, { responsive: true, displaylogo: false });
      for (const g of ["A", "B"]) {
        const shown = p.data[g].examples || [];
        const thumbs = container.querySelector(`#pair-${k}-${g}-examples`);
        const thumbLayout = plotLayout(`Group ${g}: ${shown.length} of its examples`, false);
        if (shown.length && isImage(shown[0])) {
          const z = tile(shown.map((img) => img[0]), THUMBS_PER_ROW);
          thumbLayout.yaxis = { autorange: "reversed", scaleanchor: "x", showticklabels: false, showgrid: false, zeroline: false };
          thumbLayout.xaxis = { showticklabels: false, showgrid: false, zeroline: false };
          await Plotly.react(thumbs, [{ type: "heatmap", z, colorscale: "Greys", reversescale: true, showscale: false, hoverongaps: false }], thumbLayout, { responsive: true, displaylogo: false });
        } else if (p.data[g].snippets || shown.length) {  // text snippets, or a table's rows (first 12 values)
          const text = p.data[g].snippets ?? shown.map((row) => row.flat(3).slice(0, 12).map((v) => Number(v).toPrecision(3)).join(", "));
          thumbs.innerHTML = `<table class="examples"><caption>${esc(thumbLayout.title.text)}</caption>
            <thead><tr><th>example</th><th>${p.data[g].snippets ? "text" : "values"}</th></tr></thead>
            <tbody>${text.map((t, i) => `<tr><td>${i + 1}</td><td>${esc(t)}</td></tr>`).join("")}</tbody></table>`;
        }
        thumbs.dataset.examples = shown.length;
        const f = p.data[g].mean_input_minus_all;
        const el = container.querySelector(`#pair-${k}-${g}-feature`);
        if (!f) continue;
        const layout = plotLayout(`Group ${g}: mean input − dataset mean`, false);
        if (isImage(f)) {
          layout.yaxis = { autorange: "reversed", scaleanchor: "x", title: { text: "row" }, zeroline: false, showgrid: false };
          layout.xaxis = { title: { text: "column" }, zeroline: false, showgrid: false, constrain: "domain" };
          await Plotly.react(el, [{ type: "heatmap", z: f[0], colorscale: "RdBu", reversescale: true, zmid: 0 }], layout, { responsive: true, displaylogo: false });
        } else {
          await Plotly.react(el, [{ type: "bar", y: f.flat(3) }], layout, { responsive: true, displaylogo: false });
        }
      }
    }
  };
  const exportAll = () => addExports(container, `job${jobId}`);
  const poll = () => {
    clearTimeout(timer);
    if (stopped) return;
    draw().then(exportAll).catch(console.error).finally(() => { if (!stopped && isLive()) timer = setTimeout(poll, POLL_MS); });
  };
  poll();
  return { refresh: poll, stop: () => { stopped = true; clearTimeout(timer); } };
}
