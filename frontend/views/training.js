// The training curves every job has (loss, accuracy, lr), drawn from backend/figures/training.py, with the
// job page's options for series charts: smoothing (a debiased EMA, as TensorBoard draws it, beside the raw
// curve) and log axes.
import { serverView } from "./figures.js";

// Debiased exponential moving average; null values stay gaps.
export function smoothed(y, weight) {
  let last = 0, n = 0;
  return y.map((v) => {
    if (v == null || !Number.isFinite(v)) return null;
    last = weight * last + (1 - weight) * v;
    n += 1;
    return last / (1 - weight ** n);
  });
}

// The options over a set of series charts: each chart keeps its own log-y default (from its figure) unless
// the viewer chose one for all; smoothable traces get a smoothed twin after the raw ones.
export function seriesCharts(ctx) {
  const charts = new Map();  // element → its figure's y axis type
  const raw = (el) => (el.data || []).map((t, i) => [t, i]).filter(([t]) => t.meta?.smooth);
  const restyle = (el) => {
    const o = ctx.options;
    const n = el.data.filter((t) => !t.meta?.smoothed).length;
    raw(el).forEach(([t, i], j) => {
      Plotly.restyle(el, { x: [t.x], y: [smoothed(t.y, o.smooth)], visible: o.smooth > 0 }, [n + j]);
      Plotly.restyle(el, { opacity: o.smooth > 0 ? 0.3 : 1 }, [i]);
    });
  };
  const axes = (el) => {
    const o = ctx.options;
    const y = o.logy == null ? charts.get(el) : o.logy === "1" ? "log" : "linear";
    Plotly.relayout(el, { "xaxis.type": o.logx ? "log" : "linear", "yaxis.type": y });
  };
  ctx.onOptions(() => charts.forEach((_, el) => { restyle(el); axes(el); }));
  return {
    transform: (el, figure) => {
      charts.set(el, figure.layout.yaxis?.type ?? "linear");
      const twins = raw(el).map(([t]) => ({ name: `${t.name} (smoothed)`, x: t.x, y: smoothed(t.y, ctx.options.smooth), mode: "lines",
        visible: ctx.options.smooth > 0, meta: { smoothed: true } }));
      if (twins.length) Plotly.addTraces(el, twins);
      restyle(el);
      axes(el);
    },
    grew: (el) => { if (charts.has(el)) restyle(el); },
  };
}

export function trainingView(container, ctx) {
  container.innerHTML = `<div class="plots"></div>`;
  const charts = seriesCharts(ctx);
  return serverView(container, ctx, { name: "training", transform: charts.transform, grew: charts.grew });
}
