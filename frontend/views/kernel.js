// The kernel view (backend/figures/kernel.py): the empirical NTK's motion, alignment and scale over training,
// and the latest kernel of the sample's first examples.
import { serverView } from "./figures.js";

export function kernelView(container, ctx) {
  container.innerHTML = `
    <section aria-labelledby="kernel-heading">
      <h2 id="kernel-heading">Neural tangent kernel</h2>
      <p class="muted" id="kernel-info"></p>
      <div class="plots"></div>
    </section>`;
  return serverView(container, ctx, { name: "kernel" });
}
