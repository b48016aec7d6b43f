// The runs table (GET /jobs-table): a team's runs or a sweep's, a column per chosen spec field and per summary of a
// series (final/min/max), sorted by a header click, filtered by conditions (optimizer.lr>=0.1, final:val/loss<2),
// paged on the server; the selected runs open in Compare. Everything is in the URL.
import { api, esc } from "./common.js";

const LIMIT = 50;
const format = (v) => (v == null ? "" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : String(v));

export function renderRuns(view, params) {
  const state = {
    sweep: params.get("sweep") || "", fields: params.get("fields") || "", metrics: params.get("metrics") || "final:val/loss,final:train/loss",
    where: params.getAll("where"), sort: params.get("sort") || "-created", offset: Number(params.get("offset") || 0),
  };
  const selected = new Set();
  view.innerHTML = `
    <h1>Runs${state.sweep ? ` of sweep ${esc(state.sweep)}` : ""}</h1>
    <div class="toolbar">
      <label>Sweep <input id="runs-sweep" size="5" value="${esc(state.sweep)}"></label>
      <label>Fields <input id="runs-fields" size="30" placeholder="optimizer.lr,train.seed (default: the swept ones)" value="${esc(state.fields)}"></label>
      <label>Metrics <input id="runs-metrics" size="36" placeholder="final:val/loss,min:train/loss,max:hessian/sharpness" value="${esc(state.metrics)}"></label>
      <label>Where <input id="runs-where" size="36" placeholder="optimizer.lr>=0.1; final:val/loss<2" value="${esc(state.where.join("; "))}"></label>
      <button id="runs-draw">Show</button>
    </div>
    <div class="toolbar">
      <span id="runs-count" class="muted" aria-live="polite"></span>
      <button id="runs-prev">Previous</button><button id="runs-next">Next</button>
      <a id="runs-compare" href="#/compare">Compare selected</a>
      <span id="runs-error" class="error" role="alert"></span>
    </div>
    <table id="runs-table"><thead></thead><tbody></tbody></table>`;
  const read = () => {
    state.sweep = view.querySelector("#runs-sweep").value.trim();
    state.fields = view.querySelector("#runs-fields").value.replace(/\s/g, "");
    state.metrics = view.querySelector("#runs-metrics").value.replace(/\s/g, "");
    state.where = view.querySelector("#runs-where").value.split(";").map((w) => w.replace(/\s/g, "")).filter(Boolean);
    const p = new URLSearchParams();
    for (const k of ["sweep", "fields", "metrics", "sort"]) if (state[k]) p.set(k, state[k]);
    for (const w of state.where) p.append("where", w);
    if (state.offset) p.set("offset", state.offset);
    history.replaceState(null, "", `#/runs?${p}`);
  };
  const showCompare = () => {
    const link = view.querySelector("#runs-compare");
    link.href = `#/compare?jobs=${[...selected].join(",")}`;
    link.textContent = `Compare selected (${selected.size})`;
  };
  const load = async () => {
    read();
    const p = new URLSearchParams({ sort: state.sort, limit: LIMIT, offset: state.offset, metrics: state.metrics });
    if (state.sweep) p.set("sweep_id", state.sweep);
    if (state.fields) p.set("fields", state.fields);
    for (const w of state.where) p.append("where", w);
    let body;
    try {
      body = await api(`/jobs-table?${p}`);
    } catch (err) {
      view.querySelector("#runs-error").textContent = err.body?.detail?.[0]?.msg ?? String(err);
      return;
    }
    view.querySelector("#runs-error").textContent = "";
    const columns = [["id", "ID"], ["name", "Name"], ["status", "Status"], ...body.fields.map((f) => [f, f]), ...body.metrics.map((m) => [m, m])];
    const arrow = (key) => (state.sort === key ? " ▲" : state.sort === `-${key}` ? " ▼" : "");
    view.querySelector("#runs-table thead").innerHTML = `<tr><th></th>${columns.map(([key, title]) =>
      `<th><button class="sort" data-key="${esc(key)}" aria-label="sort by ${esc(title)}">${esc(title)}${arrow(key)}</button></th>`).join("")}</tr>`;
    view.querySelector("#runs-table tbody").innerHTML = body.items.map((r) => `
      <tr class="run-row" data-id="${r.id}">
        <td><input type="checkbox" class="select-run" data-id="${r.id}" ${selected.has(r.id) ? "checked" : ""} aria-label="select run ${r.id}"></td>
        <td>${r.id}</td><td><a href="#/jobs/${r.id}">${esc(r.name)}</a></td><td class="status ${esc(r.status)}">${esc(r.status)}</td>
        ${body.fields.map((f) => `<td>${esc(format(r.fields[f]))}</td>`).join("")}
        ${body.metrics.map((m) => `<td class="number">${esc(format(r.metrics[m]))}</td>`).join("")}
      </tr>`).join("");
    view.querySelector("#runs-count").textContent = `${body.total} run${body.total === 1 ? "" : "s"}` +
      (body.total > LIMIT ? `, ${state.offset + 1}–${Math.min(state.offset + LIMIT, body.total)}` : "");
    view.querySelector("#runs-prev").disabled = state.offset === 0;
    view.querySelector("#runs-next").disabled = state.offset + LIMIT >= body.total;
    view.querySelector("#runs-table").dataset.total = body.total;
    showCompare();
  };
  view.querySelector("#runs-table thead").addEventListener("click", (e) => {
    const key = e.target.closest("button.sort")?.dataset.key;
    if (!key) return;
    state.sort = state.sort === `-${key}` ? key : `-${key}`;
    state.offset = 0;
    load().catch(console.error);
  });
  view.querySelector("#runs-table tbody").addEventListener("change", (e) => {
    const id = Number(e.target.dataset.id);
    if (!e.target.classList.contains("select-run")) return;
    if (e.target.checked) selected.add(id); else selected.delete(id);
    showCompare();
  });
  view.querySelector("#runs-draw").addEventListener("click", () => { state.offset = 0; load().catch(console.error); });
  view.querySelector("#runs-prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - LIMIT); load().catch(console.error); });
  view.querySelector("#runs-next").addEventListener("click", () => { state.offset += LIMIT; load().catch(console.error); });
  load().catch(console.error);
  return () => {};
}
