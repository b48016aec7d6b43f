// The loss-landscape view (backend/figures/landscape.py): a surface or curve from the `landscape` probe or an
// analysis of kept checkpoints, drawn while it is computed; which one, a log colour scale and 3-D are the
// viewer's choice, kept in the URL (ls, lslog, ls3d). Every finished result exports as CSV, JSON, NPZ or VTK.
import { API, esc } from "../common.js";
import { serverView } from "./figures.js";

export function landscapeView(container, ctx) {
  const options = { pick: ctx.params.get("ls") || "", log: ctx.params.get("lslog") === "1", surface3d: ctx.params.get("ls3d") === "1" };
  container.innerHTML = `
    <section aria-labelledby="landscape-heading">
      <h2 id="landscape-heading">Loss landscape</h2>
      <div class="toolbar">
        <label>Surface <select id="landscape-pick"></select></label>
        <label><input type="checkbox" id="landscape-log" ${options.log ? "checked" : ""}> log colour</label>
        <label><input type="checkbox" id="landscape-3d" ${options.surface3d ? "checked" : ""}> 3-D</label>
        <span id="landscape-export" class="muted"></span>
      </div>
      <p id="landscape-info" class="muted" aria-live="polite"></p>
      <div id="landscape-plot" class="plot" role="img" aria-label="loss landscape"></div>
    </section>`;
  const pick = container.querySelector("#landscape-pick");
  const query = () => new URLSearchParams({ result: options.pick || "0", log: options.log, surface3d: options.surface3d }).toString();
  const drawn = (v) => {
    pick.innerHTML = v.choices.map((c) => `<option value="${c.value}">${esc(c.label)}</option>`).join("");
    const plot = container.querySelector("#landscape-plot");
    pick.value = plot.dataset.result ?? "";
    if (!v.figures.length) container.querySelector("#landscape-info").textContent = ctx.live() ? "waiting for the first surface…" : "no surface yet";
    container.querySelector("#landscape-export").innerHTML = !v.figures.length || plot.dataset.partial === "1" ? "" : "Export " + ["csv", "json", "npz", "vtk"].map((f) =>
      `<a class="landscape-export" data-format="${f}" href="${API}/jobs/${ctx.jobId}/landscapes/${plot.dataset.result}/export?format=${f}" download>${f.toUpperCase()}</a>`).join(" ");
  };
  const view = serverView(container, ctx, { name: "landscape", query, drawn });
  const choose = (changed) => { ctx.setState(changed); view.refresh(); };
  pick.addEventListener("change", () => { options.pick = pick.value; choose({ ls: pick.value }); });
  container.querySelector("#landscape-log").addEventListener("change", (e) => { options.log = e.target.checked; choose({ lslog: options.log ? "1" : "" }); });
  container.querySelector("#landscape-3d").addEventListener("change", (e) => { options.surface3d = e.target.checked; choose({ ls3d: options.surface3d ? "1" : "" }); });
  return view;
}
