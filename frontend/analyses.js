// The job page's analyses of kept checkpoints: the buttons that ask for one, and the table of those asked for
// (state, stage, a summary of the result), redrawn by the job's events (`analysis`, `result`), with a cancel
// button while one runs.
import { TERMINAL, api, esc } from "./common.js";

const fmt = (v) => (v == null ? "" : Number(v).toPrecision(4));
const diagonal = (m) => { const d = m.slice(0, Math.min(m.length, m[0].length)).map((row, i) => row[i]).filter((v) => v != null); return d.reduce((a, b) => a + b, 0) / d.length; };
const SUMMARIES = {
  hessian: (r) => [r.eigenvalues?.length ? `λ: ${r.eigenvalues.map(fmt).join(", ")}` : "",
    r.trace ? `trace ${fmt(r.trace.value)} ± ${fmt(r.trace.stderr)}` : "", r.density ? `≈${r.density.outliers} outliers (${r.n_classes} classes)` : ""].filter(Boolean).join(" · "),
  landscape: (r) => r.loss ? `${r.dims === 2 ? `${r.resolution}×${r.resolution}` : r.resolution} ${r.plane} plane, centre loss ${fmt(r.centre_loss)}` : "",
  trajectory: (r) => r.path ? `${r.path.steps.length} checkpoints, PCs explain ${r.explained_variance_ratio.map((v) => `${(100 * v).toFixed(1)} %`).join(" + ")}` : "",
  representations: (r) => r.matrix ? `job ${r.start.job} step ${r.start.step} × job ${r.end.job} step ${r.end.step}: ${r.layers.length}×${r.to_layers.length} layers, mean diagonal CKA ${fmt(diagonal(r.matrix))}` : "",
  interpolation: (r) => r.to ? `job ${r.from.job} step ${r.from.step} → job ${r.to.job} step ${r.to.step}: loss ${fmt(r.centre_loss)} → ${fmt(r.end_loss)}, max ${fmt(Math.max(...r.loss.filter((v) => v != null)))}` : "",
};

export function analysesSection(container, ctx) {
  container.innerHTML = `
    <h2>Analyses of kept checkpoints</h2>
    <div class="toolbar">
      <button id="analyze-hessian" class="writes">Hessian of the latest checkpoint</button>
      <span class="muted">top-5 eigenvalues, most negative, trace and density, on up to 1,000 training examples</span>
    </div>
    <div class="toolbar">
      <button id="analyze-landscape" class="writes">Loss landscape of the latest checkpoint</button>
      <span class="muted">25×25 filter-normalized random plane, ±1, on up to 1,000 training examples</span>
    </div>
    <div class="toolbar">
      <button id="analyze-trajectory" class="writes">Training path on its PCA plane</button>
      <button id="analyze-interpolation" class="writes">Interpolate first → last checkpoint</button>
      <label>or last checkpoint → job <input id="interpolate-job" type="number" min="1" style="width:6em"></label>
      <button id="analyze-interpolation-job" class="writes">Interpolate to that job</button>
    </div>
    <div class="toolbar">
      <button id="analyze-representations" class="writes">CKA: last → first checkpoint</button>
      <label>or last checkpoint × job <input id="representations-job" type="number" min="1" style="width:6em"></label>
      <button id="analyze-representations-job" class="writes">CKA with that job</button>
      <span class="muted">every layer against every layer, on 256 training examples</span>
    </div>
    <table id="analyses-table"><thead><tr><th>ID</th><th>Kind</th><th>Step</th><th>Status</th><th>Stage</th><th>Result</th><th></th></tr></thead><tbody></tbody></table>`;
  const rows = new Map();  // analysis id → its row as the API gives it
  const results = {};  // analysis id → its result document
  const show = () => {
    container.querySelector("#analyses-table tbody").innerHTML = [...rows.values()].map((a) => {
      const r = results[a.id] || {};
      return `<tr data-analysis="${a.id}"><td>${a.id}</td><td>${esc(a.kind)}</td><td>${a.step}</td><td class="status ${a.status}">${a.status}</td>
        <td>${esc(a.error ? a.error.split("\n").filter(Boolean).pop() : a.stage)}</td><td>${esc(SUMMARIES[a.kind]?.(r) ?? "")}</td>
        <td>${TERMINAL.has(a.status) || a.cancel_requested ? "" : `<button class="cancel-analysis danger writes" data-id="${a.id}" aria-label="cancel analysis ${a.id}">Cancel</button>`}</td></tr>`;
    }).join("");
  };
  const readResults = async (kinds) => {
    const lists = await Promise.all(kinds.map((k) => api(`/jobs/${ctx.jobId}/results/${k}_analysis`)));
    for (const r of lists.flat()) results[r.data.analysis_id] = r.data;
  };
  const refresh = async () => {
    const [list] = await Promise.all([api(`/jobs/${ctx.jobId}/analyses`), readResults(Object.keys(SUMMARIES))]);
    list.forEach((a) => rows.set(a.id, a));
    show();
  };
  container.querySelector("#analyses-table tbody").addEventListener("click", async (e) => {
    const button = e.target.closest("button.cancel-analysis");
    if (!button) return;
    button.disabled = true;
    const a = await api(`/jobs/${ctx.jobId}/analyses/${button.dataset.id}/cancel`, { method: "POST" }).catch(console.error);
    if (a) { rows.set(a.id, a); show(); }
  });
  const analyze = (body) => async () => {
    try {
      const a = await api(`/jobs/${ctx.jobId}/analyses`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
      rows.set(a.id, a);
      show();
      ctx.listen();  // the job's event stream, opened again if it had ended with the job
    } catch (err) {
      alert(err.body?.detail?.[0]?.msg ?? String(err));
    }
  };
  container.querySelector("#analyze-hessian").addEventListener("click", analyze({ kind: "hessian", top_k: 5, negative: 1, trace: true, density: true }));
  container.querySelector("#analyze-landscape").addEventListener("click", analyze({ kind: "landscape", resolution: 25 }));
  container.querySelector("#analyze-trajectory").addEventListener("click", analyze({ kind: "trajectory", resolution: 25 }));
  container.querySelector("#analyze-interpolation").addEventListener("click", analyze({ kind: "interpolation" }));
  container.querySelector("#analyze-interpolation-job").addEventListener("click", () => {
    const other = Number(container.querySelector("#interpolate-job").value);
    if (other > 0) analyze({ kind: "interpolation", to_job: other })().catch(console.error);
  });
  container.querySelector("#analyze-representations").addEventListener("click", analyze({ kind: "representations" }));
  container.querySelector("#analyze-representations-job").addEventListener("click", () => {
    const other = Number(container.querySelector("#representations-job").value);
    if (other > 0) analyze({ kind: "representations", to_job: other })().catch(console.error);
  });
  const onEvent = (type, data) => {
    if (type === "analysis") {
      rows.set(data.id, data);
      show();
    } else if (type === "result" && data.kind.endsWith("_analysis")) {
      readResults([data.kind.replace(/_analysis$/, "")]).then(show).catch(console.error);
    }
  };
  refresh().catch(console.error);
  // An analysis asked for just as the job's stream was ending can miss the stream: still running after a refresh.
  const pending = () => [...rows.values()].some((a) => !TERMINAL.has(a.status));
  return { refresh, onEvent, pending, stop: () => {} };
}
