// The Hessian view (backend/figures/hessian.py): the sharpness against its stability threshold, marked where
// it first reaches it, under the job page's options for series charts; and the latest spectral density.
import { serverView } from "./figures.js";
import { seriesCharts } from "./training.js";

export function hessianView(container, ctx) {
  container.innerHTML = `<section aria-label="Hessian"><div class="plots"></div></section>`;
  const charts = seriesCharts(ctx);
  return serverView(container, ctx, {
    name: "hessian",
    transform: (el, figure) => { if (figure.id === "sharpness-plot") charts.transform(el, figure); },
    grew: charts.grew,
  });
}
