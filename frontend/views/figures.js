// Drawing the server's figure descriptions (backend/figures: the same ones the HTML report embeds). Every view
// of a job is a `serverView`: it fetches its figures from /jobs/<id>/figures/<view>, extends the traces that
// draw a series (meta.series) with the live points of `metrics` events, and fetches its figures again when a
// result of a kind it reads arrives or the job ends. Nothing polls.
import { PLOT_CONFIG, addExports, api, esc, fullPlotly, themed } from "../common.js";

const MIN_REDRAW_MS = 1000;  // a view redraws at most this often, however many results arrive
const MAX_POINTS = 2000;

export const chartBox = (id, label) => `<div class="chart"><div id="${id}" class="plot" role="img" aria-label="${esc(label)}"></div></div>`;

function tableHtml(t) {
  return `<table class="examples"><caption>${esc(t.caption)}</caption><thead><tr>${t.header.map((h) => `<th>${esc(h)}</th>`).join("")}</tr></thead>
    <tbody>${t.rows.map((row) => `<tr>${row.map((c) => `<td>${esc(c)}</td>`).join("")}</tr>`).join("")}</tbody></table>`;
}

// One figure into its element: its facts as data attributes, then the chart (or its table).
export async function draw(el, figure) {
  for (const [k, v] of Object.entries(figure.meta || {})) el.dataset[k] = v ?? "";
  if (figure.table) {
    el.innerHTML = tableHtml(figure.table);
    return;
  }
  if (figure.data.some((t) => t.type === "surface") && !el.dataset.full) {
    await fullPlotly();
    Plotly.purge(el);  // drawn from now on by the full bundle
    el.dataset.full = "1";
  }
  const layout = { ...themed(figure.layout), uirevision: `${figure.id}:${figure.meta?.result ?? ""}` };
  await Plotly.react(el, figure.data, layout, { ...PLOT_CONFIG, toImageButtonOptions: { filename: figure.id } });
}

// Live points: each trace that draws a series takes the points after the last one it has. True if any grew.
export function extend(el, points) {
  const indices = [], xs = [], ys = [];
  (el.data || []).forEach((t, i) => {
    const p = points[t.meta?.series];
    if (!p) return;
    const last = t.x.length ? t.x[t.x.length - 1] : -1;
    const keep = p.steps.map((_, k) => k).filter((k) => p.steps[k] > last);
    if (!keep.length) return;
    indices.push(i);
    xs.push(keep.map((k) => p.steps[k]));
    ys.push(keep.map((k) => p.values[k]));
  });
  if (indices.length) Plotly.extendTraces(el, { x: xs, y: ys }, indices);
  return indices.length > 0;
}

// A view drawn from the server's figures (redrawn when a result of one of ctx.kinds arrives). `query()`: its options as a
// query string; `place(figure)`: the element of a figure the container does not have yet (default: a chart in
// the container's `.plots` grid); `transform(el, figure)`: what the view adds once a figure is drawn;
// `grew(el)`: after live points extended a chart; `drawn(view)`: after each drawing.
export function serverView(container, ctx, { name, query = () => "", place, transform = () => {}, grew = () => {}, drawn = () => {} }) {
  let stopped = false, timer = null, busy = false, again = false, last = 0;
  const grid = () => container.querySelector(".plots") ?? container;
  const placeChart = place ?? ((figure) => {
    grid().insertAdjacentHTML("beforeend", chartBox(figure.id, figure.layout?.title?.text ?? figure.id));
    return container.querySelector(`#${CSS.escape(figure.id)}`);
  });
  const paint = async () => {
    const q = query();
    const view = await api(`/jobs/${ctx.jobId}/figures/${name}${q ? `?${q}` : ""}`);
    if (stopped) return;
    for (const figure of view.figures) {
      const el = container.querySelector(`#${CSS.escape(figure.id)}`) ?? placeChart(figure);
      await draw(el, figure);
      transform(el, figure);
    }
    for (const [id, text] of Object.entries(view.notes)) {
      const el = container.querySelector(`#${CSS.escape(id)}`);
      if (el) el.textContent = text;
    }
    addExports(container, `job${ctx.jobId}`);
    drawn(view);
  };
  // Every caller waiting for a drawing: a refresh that replaces a pending one (its timer cleared) must still
  // resolve the earlier promises, or whoever awaits them (the job page mounting its views in turn) waits forever.
  let waiting = [];
  const settle = () => { const done = waiting; waiting = []; done.forEach((resolve) => resolve()); };
  const refresh = () => {
    if (stopped) return Promise.resolve();
    if (busy) { again = true; return Promise.resolve(); }
    clearTimeout(timer);
    const wait = Math.max(0, last + MIN_REDRAW_MS - Date.now());
    return new Promise((resolve) => {
      waiting.push(resolve);
      timer = setTimeout(() => {
        busy = true;
        last = Date.now();
        paint().catch(console.error).finally(() => {
          busy = false;
          settle();
          if (again) { again = false; refresh(); }
        });
      }, wait);
    });
  };
  const onEvent = (type, data) => {
    if (type === "metrics") {
      let longest = 0;
      for (const el of container.querySelectorAll(".js-plotly-plot")) {
        if (extend(el, data)) grew(el);
        longest = Math.max(longest, ...(el.data || []).map((t) => t.x?.length ?? 0));
      }
      // Live points pile up; past a few times the budget, redraw from the server's spike-keeping downsample.
      if (longest > 4 * MAX_POINTS) refresh();
    } else if ((type === "result" && ctx.kinds.includes(data.kind)) || type === "end") {
      refresh();
    }
  };
  return { refresh, onEvent, stop: () => { stopped = true; clearTimeout(timer); settle(); } };
}

// A view that is a heading, a line of facts (#<name>-info, the server's note) and the server's figures.
export function sectionView(name, title) {
  return (container, ctx) => {
    container.innerHTML = `
      <section aria-labelledby="${name}-heading">
        <h2 id="${name}-heading">${esc(title)}</h2>
        <p class="muted" id="${name}-info"></p>
        <div class="plots"></div>
      </section>`;
    return serverView(container, ctx, { name });
  };
}
