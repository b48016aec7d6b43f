// The gradient-statistics view (backend/figures/gradstats.py): noise scale, coherence and Cockpit's tests,
// update ratios and cosines over steps, per-layer gradient norms as a heat map, the latest per-example
// histogram and layer spectra.
import { serverView } from "./figures.js";

export function gradstatsView(container, ctx) {
  container.innerHTML = `
    <section aria-labelledby="gradstats-heading">
      <h2 id="gradstats-heading">Gradient statistics</h2>
      <p class="muted" id="gradstats-info"></p>
      <div class="plots"></div>
    </section>`;
  return serverView(container, ctx, { name: "gradstats" });
}
