// The representations view (backend/figures/representations.py): each layer's linear CKA with its first and its
// previous probe over training, the latest layer × layer CKA matrix, and a comparison of two checkpoints (this
// job's, or another job's) asked for as an analysis, the one chosen kept in the URL (cka).
import { esc } from "../common.js";
import { serverView } from "./figures.js";

export function representationsView(container, ctx) {
  const options = { pick: ctx.params.get("cka") || "" };
  container.innerHTML = `
    <section aria-labelledby="representations-heading">
      <h2 id="representations-heading">Representations (linear CKA)</h2>
      <p class="muted" id="representations-info"></p>
      <div class="toolbar" id="representations-compare" hidden>
        <label>Comparison <select id="representations-pick"></select></label>
      </div>
      <p class="muted" id="representations-compare-info"></p>
      <div class="plots"></div>
    </section>`;
  const pick = container.querySelector("#representations-pick");
  const query = () => new URLSearchParams({ result: options.pick || "0" }).toString();
  const drawn = (v) => {
    container.querySelector("#representations-compare").hidden = !v.choices.length;
    pick.innerHTML = v.choices.map((c) => `<option value="${c.value}">${esc(c.label)}</option>`).join("");
    pick.value = container.querySelector("#cka-compare")?.dataset.result ?? "";
  };
  const view = serverView(container, ctx, { name: "representations", query, drawn });
  pick.addEventListener("change", () => { options.pick = pick.value; ctx.setState({ cka: pick.value }); view.refresh(); });
  return view;
}
