// The opposing-signals view (backend/figures/signals.py): the probe set's loss with the steps where a pair was
// found, the heavy-tail share of |Δℓ|, and per pair (the most opposed first) its groups' losses with even/odd
// envelopes, their classes, examples and shared feature.
import { esc } from "../common.js";
import { chartBox, serverView } from "./figures.js";

// A pair's block: its heading, the Hessian alignment, and a grid for its figures (pair-<k>-…).
function pairBlock(k) {
  return `<div id="pair-${k}"><h3 id="pair-${k}-heading"></h3><p class="muted" id="pair-${k}-alignment"></p><div class="plots" id="pair-${k}-plots"></div></div>`;
}

export function signalsView(container, ctx) {
  container.innerHTML = `
    <section aria-labelledby="signals-heading">
      <h2 id="signals-heading">Opposing signals</h2>
      <p class="muted" id="signals-info"></p>
      <div class="plots" id="signals-plots"></div>
      <div id="signals-pairs"></div>
    </section>`;
  const place = (figure) => {
    const pair = figure.id.match(/^pair-(\d+)-/);
    if (!pair) {
      container.querySelector("#signals-plots").insertAdjacentHTML("beforeend", chartBox(figure.id, figure.layout?.title?.text ?? figure.id));
    } else {
      if (!container.querySelector(`#pair-${pair[1]}`)) container.querySelector("#signals-pairs").insertAdjacentHTML("beforeend", pairBlock(pair[1]));
      const about = figure.id.match(/^pair-\d+-([AB])-feature$/);
      const html = chartBox(figure.id, figure.layout?.title?.text ?? figure.table?.caption ?? figure.id);
      container.querySelector(`#pair-${pair[1]}-plots`).insertAdjacentHTML("beforeend",
        about ? html.replace(/<\/div>$/, `<p class="muted" id="pair-${pair[1]}-${about[1]}-about"></p></div>`) : html);
    }
    return container.querySelector(`#${CSS.escape(figure.id)}`);
  };
  // (The pairs are ranked by cos: when a new one moves the others, block k draws the new k-th pair.)
  return serverView(container, ctx, { name: "signals", place });
}
