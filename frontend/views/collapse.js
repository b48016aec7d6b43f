// The neural-collapse view (backend/figures/collapse.py): NC1–NC4 over training and the latest cosines of the
// centred class means.
import { serverView } from "./figures.js";

export function collapseView(container, ctx) {
  container.innerHTML = `
    <section aria-labelledby="collapse-heading">
      <h2 id="collapse-heading">Neural collapse</h2>
      <p class="muted" id="collapse-info"></p>
      <div class="plots"></div>
    </section>`;
  return serverView(container, ctx, { name: "collapse" });
}
