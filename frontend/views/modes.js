// The deep linear modes view (backend/figures/modes.py): the network's strength along each singular mode of the
// data against Saxe et al.'s closed form, and how far its map is from decoupled.
import { serverView } from "./figures.js";

export function modesView(container, ctx) {
  container.innerHTML = `
    <section aria-labelledby="modes-heading">
      <h2 id="modes-heading">Deep linear modes</h2>
      <p class="muted" id="modes-info"></p>
      <div class="plots"></div>
    </section>`;
  return serverView(container, ctx, { name: "modes" });
}
