// The representations view (backend/figures/representations.py): each layer's linear CKA with its first and its
// previous probe over training, and the latest layer × layer CKA matrix.
import { serverView } from "./figures.js";

export function representationsView(container, ctx) {
  container.innerHTML = `
    <section aria-labelledby="representations-heading">
      <h2 id="representations-heading">Representations (linear CKA)</h2>
      <p class="muted" id="representations-info"></p>
      <div class="plots"></div>
    </section>`;
  return serverView(container, ctx, { name: "representations" });
}
