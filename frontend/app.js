// Dynascope dashboard: hash routes #/jobs, #/new, #/jobs/<id>. Talks to the backend only through /api/v1.
import { renderAccount, renderSignIn, loadMe, session, signInWithCode } from "./account.js";
import { API, TERMINAL, api, download, esc, plotLayout } from "./common.js";
import { gradstatsView } from "./views/gradstats.js";
import { landscapeView } from "./views/landscape.js";
import { phaseView } from "./views/phase.js";
import { signalsView } from "./views/signals.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "diverged"];
const view = document.getElementById("view");
let cleanup = () => {};

const fmtDuration = (s) => (s == null ? "" : s < 60 ? `${s.toFixed(1)} s` : s < 3600 ? `${(s / 60).toFixed(1)} min` : `${(s / 3600).toFixed(1)} h`);
const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString() : "");

// ---- job list ------------------------------------------------------------------------------------------
const MODEL_KINDS = ["mlp", "cnn", "resnet", "transformer"];
const DATA_KINDS = ["digits", "iris", "wine", "breast_cancer", "gaussian_mixture", "teacher_student", "opposing_features", "text", "upload"];
const LIST_KEYS = ["status", "q", "sweep", "tag", "creator", "model", "data", "after", "before", "sort", "offset"];

function renderJobs(params) {
  const state = Object.fromEntries(LIST_KEYS.map((k) => [k, params.get(k) || ""]));
  state.offset = Number(state.offset || 0);
  state.sort = state.sort || "-created";
  const limit = 25;
  const options = (values, chosen, all = "all") => `<option value="">${all}</option>` + values.map((v) => `<option ${v === chosen ? "selected" : ""}>${v}</option>`).join("");
  view.innerHTML = `
    <h1>Jobs${state.sweep ? ` of sweep ${esc(state.sweep)} <a href="#/jobs" class="muted" style="font-size:1rem">(all jobs)</a>` : ""}</h1>
    <div class="toolbar" role="search">
      <label>Status <select id="status-filter">${options(STATUSES, state.status)}</select></label>
      <label>Search <input id="search" type="search" placeholder="name" value="${esc(state.q)}"></label>
      <label>Tag <input id="tag-filter" type="search" placeholder="tag" value="${esc(state.tag)}" size="10"></label>
      <label>Creator <input id="creator-filter" type="search" placeholder="username" value="${esc(state.creator)}" size="10"></label>
      <label>Model <select id="model-filter">${options(MODEL_KINDS, state.model)}</select></label>
      <label>Data <select id="data-filter">${options(DATA_KINDS, state.data)}</select></label>
      <label>From <input id="after-filter" type="date" value="${esc(state.after)}"></label>
      <label>To <input id="before-filter" type="date" value="${esc(state.before)}"></label>
      <label>Sort <select id="sort">${[["-created", "newest"], ["created", "oldest"], ["name", "name A–Z"], ["-name", "name Z–A"], ["status", "status"]]
        .map(([v, t]) => `<option value="${v}" ${v === state.sort ? "selected" : ""}>${t}</option>`).join("")}</select></label>
    </div>
    <div class="toolbar">
      <span id="jobs-count" class="muted"></span>
      <button id="prev-page">Previous</button><button id="next-page">Next</button>
      <button id="bulk-cancel" class="danger writes" disabled>Cancel selected</button>
      <button id="bulk-delete" class="danger writes" disabled>Delete selected</button>
      <span id="bulk-state" class="muted" aria-live="polite"></span>
      ${state.sweep ? `<a id="compare-sweep-link" href="#/compare?sweep=${esc(state.sweep)}">Compare this sweep</a>` : ""}
    </div>
    <table id="jobs-table"><thead><tr><th><input type="checkbox" id="select-all" aria-label="select all on this page"></th><th>ID</th><th>Name</th><th>Status</th><th>Progress</th><th>Duration</th><th>Created</th><th>Creator</th><th>Model</th><th>Data</th><th>Tags</th><th>Sweep</th></tr></thead>
    <tbody></tbody></table>`;
  const selected = new Set();
  let alive = true;
  const setHash = () => {
    const p = new URLSearchParams();
    for (const k of LIST_KEYS) if (state[k] && !(k === "sort" && state[k] === "-created")) p.set(k, state[k]);
    history.replaceState(null, "", `#/jobs${p.size ? "?" + p : ""}`);
  };
  const showSelection = () => {
    view.querySelector("#bulk-cancel").disabled = view.querySelector("#bulk-delete").disabled = selected.size === 0;
    view.querySelector("#bulk-state").textContent = selected.size ? `${selected.size} selected` : "";
  };
  let timer;
  const load = async () => {
    const p = new URLSearchParams({ limit, offset: state.offset, sort: state.sort });
    for (const [k, name] of [["status", "status"], ["q", "q"], ["sweep", "sweep_id"], ["tag", "tag"], ["creator", "creator"], ["model", "model"], ["data", "data"]]) if (state[k]) p.set(name, state[k]);
    if (state.after) p.set("created_after", `${state.after}T00:00:00Z`);
    if (state.before) p.set("created_before", `${state.before}T23:59:59.999Z`);
    const page = await api(`/jobs?${p}`);
    if (!alive) return;  // the user has moved on to another page meanwhile
    view.querySelector("#jobs-count").textContent = `${page.total} job${page.total === 1 ? "" : "s"}` +
      (page.total > limit ? `, ${state.offset + 1}–${Math.min(state.offset + limit, page.total)}` : "");
    view.querySelector("#prev-page").disabled = state.offset === 0;
    view.querySelector("#next-page").disabled = state.offset + limit >= page.total;
    view.querySelector("#jobs-table tbody").innerHTML = page.items.map((j) => `
      <tr class="job-row" data-id="${j.id}" tabindex="0">
        <td><input type="checkbox" class="select-job" data-id="${j.id}" ${selected.has(j.id) ? "checked" : ""} aria-label="select job ${j.id}"></td>
        <td>${j.id}</td><td><a href="#/jobs/${j.id}">${esc(j.name)}</a></td>
        <td class="status ${j.status}">${j.status}</td>
        <td><progress max="1" value="${j.progress}" aria-label="progress of job ${j.id}"></progress></td>
        <td>${fmtDuration(j.duration_s)}</td><td>${fmtTime(j.created_at)}</td><td>${esc(j.creator ?? "")}</td>
        <td>${esc(j.model_kind ?? "")}</td><td>${esc(j.data_kind ?? "")}</td>
        <td>${j.tags.map((t) => `<span class="tag">${esc(t)}</span>`).join(" ")}</td>
        <td>${j.sweep_id ? `<a href="#/jobs?sweep=${j.sweep_id}">${j.sweep_id}</a>` : ""}</td></tr>`).join("");
  };
  const refresh = () => { setHash(); load().catch(console.error); };
  const filter = (id, key, event = "change") => view.querySelector(id).addEventListener(event, (e) => { state[key] = e.target.value.trim(); state.offset = 0; refresh(); });
  filter("#status-filter", "status");
  filter("#model-filter", "model");
  filter("#data-filter", "data");
  filter("#after-filter", "after");
  filter("#before-filter", "before");
  filter("#sort", "sort");
  let debounce;
  for (const [id, key] of [["#search", "q"], ["#tag-filter", "tag"], ["#creator-filter", "creator"]]) {
    view.querySelector(id).addEventListener("input", (e) => {
      clearTimeout(debounce);
      debounce = setTimeout(() => { state[key] = e.target.value.trim(); state.offset = 0; refresh(); }, 250);
    });
  }
  view.querySelector("#prev-page").addEventListener("click", () => { state.offset = Math.max(0, state.offset - limit); refresh(); });
  view.querySelector("#next-page").addEventListener("click", () => { state.offset += limit; refresh(); });
  view.querySelector("#select-all").addEventListener("change", (e) => {
    for (const box of view.querySelectorAll("input.select-job")) {
      box.checked = e.target.checked;
      e.target.checked ? selected.add(Number(box.dataset.id)) : selected.delete(Number(box.dataset.id));
    }
    showSelection();
  });
  view.querySelector("#jobs-table tbody").addEventListener("click", (e) => {
    const box = e.target.closest("input.select-job");
    if (box) {
      box.checked ? selected.add(Number(box.dataset.id)) : selected.delete(Number(box.dataset.id));
      showSelection();
      return;
    }
    const row = e.target.closest("tr.job-row");
    if (row && !e.target.closest("a")) location.hash = `#/jobs/${row.dataset.id}`;
  });
  view.querySelector("#jobs-table tbody").addEventListener("keydown", (e) => {
    const row = e.target.closest("tr.job-row");
    if (row && e.target === row && (e.key === "Enter" || e.key === " ")) {
      e.preventDefault();
      location.hash = `#/jobs/${row.dataset.id}`;
    }
  });
  const bulk = (action) => async () => {
    if (action === "delete" && !confirm(`Delete ${selected.size} job(s) and everything they recorded?`)) return;
    const out = await api("/jobs/bulk", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ action, ids: [...selected] }) });
    const refused = Object.entries(out.refused);
    view.querySelector("#bulk-state").textContent = `${action === "delete" ? "deleted" : "cancelled"} ${out.done.length}` +
      (refused.length ? `; not ${refused.map(([id, why]) => `${id} (${why})`).join(", ")}` : "");
    out.done.forEach((id) => selected.delete(id));
    view.querySelector("#bulk-cancel").disabled = view.querySelector("#bulk-delete").disabled = selected.size === 0;
    load().catch(console.error);
  };
  view.querySelector("#bulk-cancel").addEventListener("click", bulk("cancel"));
  view.querySelector("#bulk-delete").addEventListener("click", bulk("delete"));
  load().catch(console.error);
  timer = setInterval(() => load().catch(console.error), 3000);
  return () => { alive = false; clearInterval(timer); };
}

// ---- spec editor ---------------------------------------------------------------------------------------
function lineOf(text, loc) {
  // The line that holds the deepest key of an error's location, for pointing at it in the editor.
  const keys = loc.filter((k) => typeof k === "string" && k !== "body");
  const lines = text.split("\n");
  for (let depth = keys.length; depth > 0; depth--) {
    const key = keys[depth - 1];
    const re = new RegExp(`(^|[\\s{,"])${key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}"?\\s*:`);
    const i = lines.findIndex((l) => re.test(l));
    if (i >= 0) return i;
  }
  return null;
}

function renderNew(params) {
  view.innerHTML = `
    <h1>New job</h1>
    <div class="editor">
      <div>
        <label for="spec-editor">Job spec (YAML or JSON)</label>
        <textarea id="spec-editor" spellcheck="false" aria-describedby="spec-errors"></textarea>
        <div class="toolbar">
          <label>Format <select id="spec-format"><option value="application/yaml">YAML</option><option value="application/json">JSON</option></select></label>
          <button id="check-spec">Check</button>
          <button id="submit-job">Submit</button><span id="submit-state" class="muted"></span>
        </div>
      </div>
      <div><h2>Problems</h2><ul id="spec-errors" class="errors" aria-live="assertive"><li class="muted" style="border:0;color:inherit">none yet</li></ul></div>
    </div>`;
  const editor = view.querySelector("#spec-editor");
  const clone = sessionStorage.getItem("dynascope.clone");
  if (clone) { editor.value = clone; sessionStorage.removeItem("dynascope.clone"); }
  else api("/specs/example").then((ex) => { if (!editor.value) editor.value = ex.yaml; });
  const errors = view.querySelector("#spec-errors");
  const showErrors = (err, text) => {
    const detail = err.body?.detail;
    const items = Array.isArray(detail) ? detail : [{ loc: ["body"], msg: typeof detail === "string" ? detail : String(err) }];
    errors.innerHTML = items.map((e) => {
      const field = e.loc.filter((k) => k !== "body").join(".") || "spec";
      const line = lineOf(text, e.loc);
      return `<li data-line="${line ?? ""}" data-field="${esc(field)}" tabindex="0"><code>${esc(field)}</code>${line != null ? ` <span class="muted">(line ${line + 1})</span>` : ""}: ${esc(e.msg)}</li>`;
    }).join("");
  };
  view.querySelector("#check-spec").addEventListener("click", async () => {
    const text = editor.value;
    const state = view.querySelector("#submit-state");
    try {
      const c = await api("/specs/validate", { method: "POST", headers: { "content-type": view.querySelector("#spec-format").value }, body: text });
      errors.innerHTML = "";
      state.textContent = `valid: ${c.jobs} job${c.jobs === 1 ? "" : "s"} · ${c.parameters.toLocaleString("en")} parameters · input ${c.input_shape.join("×") || "tokens"} · ${c.outputs} output${c.outputs === 1 ? "" : "s"}`;
    } catch (err) { state.textContent = ""; showErrors(err, text); }
  });
  view.querySelector("#submit-job").addEventListener("click", async () => {
    const text = editor.value;
    const format = view.querySelector("#spec-format").value;
    view.querySelector("#submit-state").textContent = "submitting…";
    // A spec with a top-level `sweep` submits the whole grid; the list then shows that sweep's jobs.
    const isSweep = /^sweep\s*:/m.test(text) || /^\s*\{[\s\S]*"sweep"\s*:/.test(text);
    try {
      const made = await api(isSweep ? "/sweeps" : "/jobs", { method: "POST", headers: { "content-type": format }, body: text });
      location.hash = isSweep ? `#/jobs?sweep=${made.id}` : `#/jobs/${made.id}`;
    } catch (err) {
      view.querySelector("#submit-state").textContent = "";
      showErrors(err, text);
    }
  });
  errors.addEventListener("click", (e) => {
    const li = e.target.closest("li[data-line]");
    if (!li || li.dataset.line === "") return;
    const lines = editor.value.split("\n");
    const n = Number(li.dataset.line);
    const start = lines.slice(0, n).reduce((a, l) => a + l.length + 1, 0);
    editor.focus();
    editor.setSelectionRange(start, start + lines[n].length);
  });
  return () => {};
}

// ---- one job -------------------------------------------------------------------------------------------
const MAX_POINTS = 2000;
const TRAINING_CHARTS = {
  "loss-plot": { title: "Loss", series: ["train/loss", "val/loss"], ylog: true, smooth: ["train/loss"] },
  "acc-plot": { title: "Accuracy", series: ["train/accuracy", "val/accuracy"], ylog: false },
  "lr-plot": { title: "Learning rate", series: ["lr"], ylog: false, steps: true },
};

// Debiased exponential moving average (as TensorBoard draws it); null values stay gaps.
function smoothed(y, weight) {
  let last = 0, n = 0;
  return y.map((v) => {
    if (v == null || !Number.isFinite(v)) return null;
    last = weight * last + (1 - weight) * v;
    n += 1;
    return last / (1 - weight ** n);
  });
}

function downloadCsv(el, filename) {
  const rows = ["series,step,value"];
  for (const t of el.data) t.x.forEach((x, i) => rows.push(`"${t.name}",${x},${t.y[i] ?? ""}`));
  download(rows.join("\n") + "\n", filename, "text/csv");
}

// The charts a job has follow from its spec: each probe adds its own views.
function chartsFor(spec) {
  const charts = { ...TRAINING_CHARTS };
  const hessian = spec?.probes?.hessian;
  if (hessian) {
    // SGD: the sharpness is λ1 itself. Adam: it is λmax(P⁻¹H), drawn beside the raw λ1..k.
    const adaptive = ["adam", "adamw"].includes(spec.optimizer.kind === "sam" ? spec.optimizer.base.kind : spec.optimizer.kind);
    const lambdas = Array.from({ length: hessian.top_k }, (_, i) => `hessian/lambda_${i + 1}`).slice(adaptive ? 0 : 1);
    charts["sharpness-plot"] = { title: "Sharpness: top Hessian eigenvalues and the stability threshold",
      series: ["hessian/sharpness", ...lambdas, "hessian/threshold"], ylog: false, markers: true, threshold: "hessian/threshold",
      labels: { "hessian/sharpness": adaptive ? "sharpness λmax(P⁻¹H)" : "sharpness λ1", "hessian/threshold": adaptive ? "threshold (2+2β1)/((1−β1)·lr)" : "threshold 2(1+β)/lr" } };
  }
  return charts;
}

function thresholdCrossing(el, chart) {
  // The first step where λ1 reaches the threshold (the edge of stability), marked on the chart.
  const lam = el.data[0];
  const thr = el.data[chart.series.indexOf(chart.threshold)];
  if (!lam || !thr || !thr.y.length) return null;
  const limit = new Map(thr.x.map((x, i) => [x, thr.y[i]]));
  for (let i = 0; i < lam.x.length; i++) {
    const t = limit.get(lam.x[i]);
    if (t != null && lam.y[i] != null && lam.y[i] >= t) return lam.x[i];
  }
  return null;
}

function markCrossing(el, chart) {
  const step = thresholdCrossing(el, chart);
  const shapes = step == null ? [] : [{ type: "line", x0: step, x1: step, yref: "paper", y0: 0, y1: 1, line: { dash: "dot", color: "#cf222e" } }];
  const annotations = step == null ? [] : [{ x: step, yref: "paper", y: 1, text: `λ1 ≥ threshold at step ${step}`, showarrow: false, yanchor: "bottom", font: { color: "#cf222e" } }];
  el.dataset.crossing = step ?? "";
  Plotly.relayout(el, { shapes, annotations });
}

async function drawDensity(id, el) {
  const [latest] = await api(`/jobs/${id}/results/hessian?last=1`);
  if (!latest?.data?.density) return;
  const r = latest.data, d = r.density;
  const floor = Math.max(...d.density) * 1e-8;
  const traces = [
    { name: "density", x: d.grid, y: d.density.map((v) => Math.max(v, floor)), mode: "lines", fill: "tozeroy" },
    { name: `top-${r.eigenvalues.length} eigenvalues`, x: r.eigenvalues, y: r.eigenvalues.map(() => floor * 10), mode: "markers", marker: { symbol: "triangle-down", size: 10 } },
  ];
  const layout = plotLayout(`Spectral density at step ${latest.step}: ≈${d.outliers} outliers beyond the bulk edge · ${r.n_classes} classes`, true);
  layout.xaxis.title = { text: "eigenvalue" };
  layout.shapes = [{ type: "line", x0: d.bulk_edge, x1: d.bulk_edge, yref: "paper", y0: 0, y1: 1, line: { dash: "dash" } }];
  layout.annotations = [{ x: d.bulk_edge, yref: "paper", y: 1, text: "bulk edge", showarrow: false, yanchor: "bottom" }];
  el.dataset.step = latest.step;
  await Plotly.react(el, traces, layout, { responsive: true, displaylogo: false });
  const button = document.querySelector(`button.csv-export[data-for="${el.id}"]`);
  if (button) button.onclick = () => downloadCsv(el, `job${id}-density-step${latest.step}.csv`);
}

function renderJob(id, params) {
  const options = { smooth: Math.min(0.999, Math.max(0, Number(params.get("smooth") ?? 0.6))), logx: params.get("logx") === "1",
    logy: params.get("logy") };  // "1": every chart's y on a log scale, "0": none, absent: each chart's default (loss: log)
  view.innerHTML = `
    <h1 id="job-title">Job ${id}</h1>
    <div class="toolbar">
      <span>Status: <span id="job-status" class="status"></span></span>
      <button id="cancel-job" class="danger writes">Cancel</button>
      <button id="clone-job" class="writes">Clone and edit</button>
      <a id="job-report" href="${API}/jobs/${id}/report.html" download>HTML report</a>
    </div>
    <div class="toolbar" id="job-annotations">
      <label>Tags <input id="job-tags" placeholder="comma-separated, e.g. baseline, lr-sweep" size="30"></label>
      <label>Notes <textarea id="job-notes" rows="2" cols="50" placeholder="what this run is for, what you saw"></textarea></label>
      <button id="save-annotations" class="writes">Save</button><span id="annotations-state" class="muted" aria-live="polite"></span>
    </div>
    <progress id="progress-bar" max="1" value="0" aria-label="progress"></progress>
    <p id="job-stage" class="muted"></p>
    <p id="job-error" class="error-text"></p>
    <div class="toolbar" id="view-options">
      <label>Smoothing <input id="smoothing" type="range" min="0" max="0.99" step="0.01" value="${options.smooth}"></label>
      <span id="smoothing-value" class="muted">${options.smooth}</span>
      <label><input id="log-x" type="checkbox" ${options.logx ? "checked" : ""}> log x</label>
      <label><input id="log-y" type="checkbox" ${options.logy === "1" ? "checked" : ""}> log y</label>
    </div>
    <div class="plots" id="plots"></div>
    <div id="gradstats-view"></div>
    <div id="signals-view"></div>
    <div id="landscape-view"></div>
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
    <table id="analyses-table"><thead><tr><th>ID</th><th>Kind</th><th>Step</th><th>Status</th><th>Stage</th><th>Result</th><th></th></tr></thead><tbody></tbody></table>
    <h2>Details</h2><dl class="facts" id="job-facts"></dl>
    <h2>Spec</h2><pre class="spec" id="job-spec"></pre>`;
  let job = null;
  let charts = {};
  const lastStep = {};
  const pending = [];
  let drawn = false;
  let densityTimer = null;

  const showJob = (j) => {
    job = { ...job, ...j };
    view.querySelector("#job-title").textContent = `Job ${job.id}: ${job.name}`;
    const st = view.querySelector("#job-status");
    st.textContent = job.status; st.className = `status ${job.status}`;
    view.querySelector("#progress-bar").value = job.progress;
    view.querySelector("#job-stage").textContent = `${(job.progress * 100).toFixed(1)} % · step ${job.step} · ${job.stage}`;
    view.querySelector("#job-error").textContent = job.error || "";
    view.querySelector("#cancel-job").disabled = TERMINAL.has(job.status) || job.cancel_requested;
    const facts = { parameters: job.parameters?.toLocaleString("en"), "time spent": job.timing, attempts: `${job.attempts} of ${job.max_attempts}`, worker: job.worker_host, device: job.device,
      created: fmtTime(job.created_at), started: fmtTime(job.started_at), finished: fmtTime(job.finished_at) };
    view.querySelector("#job-facts").innerHTML = Object.entries(facts).map(([k, v]) => `<dt>${k}</dt><dd>${esc(v ?? "")}</dd>`).join("");
  };

  const scheduleDensity = () => {
    const el = view.querySelector("#density-plot");
    if (!el || densityTimer) return;
    densityTimer = setTimeout(() => { densityTimer = null; drawDensity(id, el).catch(console.error); }, 1000);
  };

  const restyleSmoothed = (el, chart) => {
    chart.smooth.forEach((name, j) => {
      const t = el.data[chart.series.indexOf(name)];
      Plotly.restyle(el, { x: [t.x], y: [smoothed(t.y, options.smooth)], visible: options.smooth > 0 }, [chart.series.length + j]);
      Plotly.restyle(el, { opacity: options.smooth > 0 ? 0.3 : 1 }, [chart.series.indexOf(name)]);
    });
  };
  const addCsvButton = (el, filename) => {
    const button = view.querySelector(`button.csv-export[data-for="${el.id}"]`);
    if (button) button.onclick = () => downloadCsv(el, filename);
  };
  const viewState = Object.fromEntries([...params].filter(([k]) => k.startsWith("ls")));
  const keepOptions = () => {
    const p = new URLSearchParams({ smooth: options.smooth });
    if (options.logx) p.set("logx", "1");
    if (options.logy != null) p.set("logy", options.logy);
    for (const [k, v] of Object.entries(viewState)) if (v) p.set(k, v);
    history.replaceState(null, "", `#/jobs/${id}?${p}`);
  };
  let landscape = null;
  let gradstats = null;
  let signals = null;
  let mountViews = () => {};
  const showLandscape = () => {
    if (landscape) return landscape.refresh();
    landscape = landscapeView(view.querySelector("#landscape-view"), id, params,
      (changed) => { Object.assign(viewState, changed); keepOptions(); }, () => job != null && !TERMINAL.has(job.status));
  };
  view.querySelector("#smoothing").addEventListener("input", (e) => {
    options.smooth = Number(e.target.value);
    view.querySelector("#smoothing-value").textContent = options.smooth;
    for (const [div, chart] of Object.entries(charts)) if (chart.smooth) restyleSmoothed(view.querySelector(`#${div}`), chart);
    keepOptions();
  });
  view.querySelector("#log-y").addEventListener("change", (e) => {
    options.logy = e.target.checked ? "1" : "0";
    for (const div of Object.keys(charts)) Plotly.relayout(view.querySelector(`#${div}`), { "yaxis.type": e.target.checked ? "log" : "linear" });
    keepOptions();
  });
  view.querySelector("#log-x").addEventListener("change", (e) => {
    options.logx = e.target.checked;
    for (const div of Object.keys(charts)) Plotly.relayout(view.querySelector(`#${div}`), { "xaxis.type": options.logx ? "log" : "linear" });
    keepOptions();
  });

  let redrawing = false;
  const appendPoints = (points) => {
    let longest = 0;
    for (const [div, chart] of Object.entries(charts)) {
      const el = view.querySelector(`#${div}`);
      let grew = false;
      chart.series.forEach((name, i) => {
        const p = points[name];
        if (!p) return;
        const keep = p.steps.map((s, k) => k).filter((k) => p.steps[k] > (lastStep[name] ?? -1));
        if (!keep.length) return;
        Plotly.extendTraces(el, { x: [keep.map((k) => p.steps[k])], y: [keep.map((k) => p.values[k])] }, [i]);
        lastStep[name] = p.steps[keep[keep.length - 1]];
        longest = Math.max(longest, el.data[i].x.length);
        grew = true;
      });
      if (grew && chart.smooth) restyleSmoothed(el, chart);
      if (grew && chart.threshold) markCrossing(el, chart);
    }
    if (points["hessian/lambda_1"]) scheduleDensity();
    // Live points pile up; past a few times the budget, redraw from the server's spike-keeping downsample.
    if (longest > 4 * MAX_POINTS && !redrawing) {
      redrawing = true;
      drawAll().catch(console.error).finally(() => { redrawing = false; });
    }
  };

  const drawAll = async () => {
    drawn = false;
    const wanted = [...new Set(Object.values(charts).flatMap((c) => c.series))].join(",");
    const m = await api(`/jobs/${id}/metrics?max_points=${MAX_POINTS}&missing_ok=true&names=${encodeURIComponent(wanted)}`);
    const byName = Object.fromEntries(m.series.map((s) => [s.name, s]));
    for (const [div, chart] of Object.entries(charts)) {
      const raw = chart.series.map((name) => {
        const s = byName[name] || { steps: [], values: [] };
        if (s.steps.length) lastStep[name] = s.steps[s.steps.length - 1];
        const isThreshold = name === chart.threshold;
        return { name: chart.labels?.[name] ?? name, x: s.steps, y: s.values, connectgaps: false,
          mode: isThreshold ? "lines" : (chart.markers || name.startsWith("val/")) ? "lines+markers" : "lines",
          line: isThreshold ? { dash: "dash", color: "#cf222e" } : chart.steps ? { shape: "hv" } : undefined,
          opacity: chart.smooth?.includes(name) && options.smooth > 0 ? 0.3 : 1 };
      });
      const smooth = (chart.smooth || []).map((name) => {
        const t = raw[chart.series.indexOf(name)];
        return { name: `${name} (smoothed)`, x: t.x, y: smoothed(t.y, options.smooth), mode: "lines", visible: options.smooth > 0 };
      });
      const el = view.querySelector(`#${div}`);
      const layout = plotLayout(chart.title, chart.ylog);
      layout.xaxis.type = options.logx ? "log" : "linear";
      layout.yaxis.type = (options.logy == null ? chart.ylog : options.logy === "1") ? "log" : "linear";
      await Plotly.newPlot(el, [...raw, ...smooth], layout, { responsive: true, displaylogo: false });
      addCsvButton(el, `job${id}-${div.replace("-plot", "")}.csv`);
      if (chart.threshold) markCrossing(el, chart);
    }
    if (view.querySelector("#density-plot")) await drawDensity(id, view.querySelector("#density-plot"));
    drawn = true;
    mountViews();
    pending.splice(0).forEach(appendPoints);
  };

  const source = new EventSource(`${API}/jobs/${id}/events`);
  const ready = api(`/jobs/${id}`).then((j) => {
    showJob(j);
    view.querySelector("#job-tags").value = j.tags.join(", ");
    view.querySelector("#job-notes").value = j.notes ?? "";
    const summarize = () => api(`/jobs/${id}/results/summary`).then((s) => {
      if (!s.length) return;
      const last = s[s.length - 1].data;
      // Time per probe next to the training itself (known once the job has finished).
      const timing = last.train_seconds == null ? null : [`training ${last.train_seconds.toFixed(1)} s`,
        ...Object.entries(last.probe_seconds || {}).map(([k, v]) => `${k} ${v.toFixed(1)} s`)].join(" · ");
      showJob({ parameters: s[0].data.parameters, timing });
    }).catch(console.error);
    summarize();
    source.addEventListener("end", summarize);
    view.querySelector("#job-spec").textContent = JSON.stringify(j.spec, null, 2);
    charts = chartsFor(j.spec);
    const chartBox = (k, label) => `<div class="chart"><button class="csv-export" data-for="${k}" aria-label="export ${esc(label)} as CSV">CSV</button>
      <div id="${k}" class="plot" role="img" aria-label="${esc(label)}"></div></div>`;
    const divs = Object.entries(charts).map(([k, c]) => chartBox(k, `${c.title} over steps`));
    if (j.spec?.probes?.hessian?.density) divs.push(chartBox("density-plot", "Hessian spectral density"));
    view.querySelector("#plots").innerHTML = divs.join("");
    // The probes' own views start once the training charts are drawn: the first chart comes first.
    mountViews = () => {
      mountViews = () => {};
      const live = () => job != null && !TERMINAL.has(job.status);
      if (j.spec?.probes?.landscape) showLandscape();
      if (j.spec?.probes?.gradstats) gradstats = gradstatsView(view.querySelector("#gradstats-view"), id, live);
      if (j.spec?.probes?.signals) signals = signalsView(view.querySelector("#signals-view"), id, live);
    };
  }).catch((err) => {
    source.close();
    view.innerHTML = `<h1>Job ${esc(id)}</h1><p class="error-text">${err.status === 404 ? "No such job." : esc(err)}</p>`;
  });
  // Drawn at once, not after the stream's hello: points the stream brings meanwhile wait in `pending`, and
  // appending skips the steps already drawn.
  ready.then(drawAll).catch(console.error);
  source.addEventListener("metrics", (e) => { const pts = JSON.parse(e.data); drawn ? appendPoints(pts) : pending.push(pts); });
  source.addEventListener("job", (e) => showJob(JSON.parse(e.data)));
  source.addEventListener("end", () => { source.close(); scheduleDensity(); if (landscape) landscape.refresh(); if (gradstats) gradstats.refresh(); if (signals) signals.refresh(); });

  let analysesTimer = null;
  const fmt = (v) => (v == null ? "" : Number(v).toPrecision(4));
  const summaries = {
    hessian: (r) => [r.eigenvalues?.length ? `λ: ${r.eigenvalues.map(fmt).join(", ")}` : "",
      r.trace ? `trace ${fmt(r.trace.value)} ± ${fmt(r.trace.stderr)}` : "", r.density ? `≈${r.density.outliers} outliers (${r.n_classes} classes)` : ""].filter(Boolean).join(" · "),
    landscape: (r) => r.loss ? `${r.dims === 2 ? `${r.resolution}×${r.resolution}` : r.resolution} ${r.plane} plane, centre loss ${fmt(r.centre_loss)}` : "",
    trajectory: (r) => r.path ? `${r.path.steps.length} checkpoints, PCs explain ${r.explained_variance_ratio.map((v) => `${(100 * v).toFixed(1)} %`).join(" + ")}` : "",
    interpolation: (r) => r.to ? `job ${r.from.job} step ${r.from.step} → job ${r.to.job} step ${r.to.step}: loss ${fmt(r.centre_loss)} → ${fmt(r.end_loss)}, max ${fmt(Math.max(...r.loss.filter((v) => v != null)))}` : "",
  };
  const showAnalyses = async () => {
    const [rows, ...results] = await Promise.all([api(`/jobs/${id}/analyses`), ...Object.keys(summaries).map((k) => api(`/jobs/${id}/results/${k}_analysis`))]);
    const byId = Object.fromEntries(results.flat().map((r) => [r.data.analysis_id, r.data]));
    view.querySelector("#analyses-table tbody").innerHTML = rows.map((a) => {
      const r = byId[a.id] || {};
      return `<tr data-analysis="${a.id}"><td>${a.id}</td><td>${esc(a.kind)}</td><td>${a.step}</td><td class="status ${a.status}">${a.status}</td>
        <td>${esc(a.error ? a.error.split("\n").filter(Boolean).pop() : a.stage)}</td><td>${esc(summaries[a.kind]?.(r) ?? "")}</td>
        <td>${TERMINAL.has(a.status) || a.cancel_requested ? "" : `<button class="cancel-analysis danger writes" data-id="${a.id}" aria-label="cancel analysis ${a.id}">Cancel</button>`}</td></tr>`;
    }).join("");
    if (rows.some((a) => a.kind !== "hessian" && a.status === "succeeded")) showLandscape();
    clearTimeout(analysesTimer);
    if (rows.some((a) => !TERMINAL.has(a.status))) analysesTimer = setTimeout(() => showAnalyses().catch(console.error), 1000);
  };
  showAnalyses().catch(console.error);
  view.querySelector("#analyses-table tbody").addEventListener("click", async (e) => {
    const button = e.target.closest("button.cancel-analysis");
    if (!button) return;
    button.disabled = true;
    await api(`/jobs/${id}/analyses/${button.dataset.id}/cancel`, { method: "POST" }).catch(console.error);
    showAnalyses().catch(console.error);
  });
  const analyze = (body) => async () => {
    try {
      await api(`/jobs/${id}/analyses`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    } catch (err) {
      alert(err.body?.detail?.[0]?.msg ?? String(err));
    }
    showAnalyses().catch(console.error);
  };
  view.querySelector("#analyze-hessian").addEventListener("click", analyze({ kind: "hessian", top_k: 5, negative: 1, trace: true, density: true }));
  view.querySelector("#analyze-landscape").addEventListener("click", analyze({ kind: "landscape", resolution: 25 }));
  view.querySelector("#analyze-trajectory").addEventListener("click", analyze({ kind: "trajectory", resolution: 25 }));
  view.querySelector("#analyze-interpolation").addEventListener("click", analyze({ kind: "interpolation" }));
  view.querySelector("#analyze-interpolation-job").addEventListener("click", () => {
    const other = Number(view.querySelector("#interpolate-job").value);
    if (other > 0) analyze({ kind: "interpolation", to_job: other })().catch(console.error);
  });

  view.querySelector("#save-annotations").addEventListener("click", async () => {
    const tags = view.querySelector("#job-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
    const state = view.querySelector("#annotations-state");
    try {
      const j = await api(`/jobs/${id}`, { method: "PATCH", headers: { "content-type": "application/json" },
        body: JSON.stringify({ tags, notes: view.querySelector("#job-notes").value }) });
      view.querySelector("#job-tags").value = j.tags.join(", ");
      state.textContent = "saved";
    } catch (err) {
      state.textContent = (err.body?.detail ?? []).map?.((e) => `${e.loc.slice(1).join(".")}: ${e.msg}`).join("; ") || String(err);
    }
  });
  view.querySelector("#cancel-job").addEventListener("click", async () => {
    view.querySelector("#cancel-job").disabled = true;
    showJob(await api(`/jobs/${id}/cancel`, { method: "POST" }));
  });
  view.querySelector("#clone-job").addEventListener("click", () => {
    if (!job?.spec) return;
    sessionStorage.setItem("dynascope.clone", JSON.stringify({ ...job.spec, name: `${job.spec.name}-copy` }, null, 2));
    location.hash = "#/new";
  });
  return () => { source.close(); clearTimeout(densityTimer); clearTimeout(analysesTimer); landscape?.stop(); gradstats?.stop(); signals?.stop(); };
}

// ---- compare runs --------------------------------------------------------------------------------------
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const dig = (obj, path) => path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);

function renderCompare(params) {
  const state = { jobs: params.get("jobs") || "", sweep: params.get("sweep") || "", series: params.get("series") || "train/loss",
    legend: params.get("legend") || "", logy: params.get("logy") === "1" };
  view.innerHTML = `
    <h1>Compare runs</h1>
    <div class="toolbar">
      <label>Jobs <input id="compare-jobs" placeholder="1,2,3" value="${esc(state.jobs)}"></label>
      <label>Sweep <input id="compare-sweep" size="5" value="${esc(state.sweep)}"></label>
      <label>Series <select id="compare-series"></select></label>
      <label>Legend by <input id="compare-legend" placeholder="optimizer.lr" value="${esc(state.legend)}"></label>
      <label><input id="compare-logy" type="checkbox" ${state.logy ? "checked" : ""}> log y</label>
      <button id="compare-draw">Draw</button>
    </div>
    <div class="chart"><button class="csv-export" data-for="compare-plot" aria-label="export the comparison as CSV">CSV</button>
      <div id="compare-plot" class="plot" role="img" aria-label="the chosen series of each job over steps"></div></div>
    <div id="phase-view"></div>`;
  const el = view.querySelector("#compare-plot");
  const phaseState = Object.fromEntries(["metric", "px", "py"].map((k) => [k, params.get(k) || ""]));
  let phaseShown = null;
  const read = () => {
    state.jobs = view.querySelector("#compare-jobs").value.replace(/\s/g, "");
    state.sweep = view.querySelector("#compare-sweep").value.trim();
    state.series = view.querySelector("#compare-series").value || state.series;
    state.legend = view.querySelector("#compare-legend").value.trim();
    state.logy = view.querySelector("#compare-logy").checked;
    const p = new URLSearchParams();
    for (const k of ["jobs", "sweep", "series", "legend"]) if (state[k]) p.set(k, state[k]);
    if (state.logy) p.set("logy", "1");
    for (const [k, v] of Object.entries(phaseState)) if (v) p.set(k, v);
    history.replaceState(null, "", `#/compare?${p}`);
  };
  const draw = async () => {
    read();
    let jobs = [];
    if (state.sweep && phaseShown !== state.sweep) {
      phaseShown = state.sweep;
      phaseView(view.querySelector("#phase-view"), state.sweep, params, (changed) => { Object.assign(phaseState, changed); read(); });
    }
    if (state.sweep) {
      const sweep = await api(`/sweeps/${state.sweep}`);
      jobs = sweep.jobs;
      if (!state.legend) state.legend = Object.keys(sweep.grid).join(",");
      view.querySelector("#compare-legend").value = state.legend;
    }
    for (const id of state.jobs.split(",").filter(Boolean)) jobs.push(await api(`/jobs/${id}`));
    const names = new Set();
    const series = await Promise.all(jobs.map((j) => api(`/jobs/${j.id}/metrics?max_points=${MAX_POINTS}`)));
    series.forEach((m) => m.series.forEach((s) => names.add(s.name)));
    const select = view.querySelector("#compare-series");
    select.innerHTML = [...names].sort().map((n) => `<option ${n === state.series ? "selected" : ""}>${esc(n)}</option>`).join("");
    const label = (j) => state.legend ? state.legend.split(",").map((f) => `${f}=${dig(j.spec, f)}`).join(", ") : `${j.id}: ${j.name}`;
    const traces = [];
    jobs.forEach((j, i) => {
      const s = series[i].series.find((t) => t.name === state.series);
      const color = PALETTE[i % PALETTE.length];
      if (s) traces.push({ name: label(j), x: s.steps, y: s.values, mode: state.series.startsWith("hessian/") ? "lines+markers" : "lines", legendgroup: String(j.id), line: { color } });
      // The sharpness comes with each run's own stability threshold.
      const t = state.series === "hessian/sharpness" && series[i].series.find((x) => x.name === "hessian/threshold");
      if (t) traces.push({ name: `threshold (${label(j)})`, x: t.steps, y: t.values, mode: "lines", line: { dash: "dash", color }, legendgroup: String(j.id) });
    });
    const layout = plotLayout(`${state.series} across ${jobs.length} runs`, state.logy);
    await Plotly.newPlot(el, traces, layout, { responsive: true, displaylogo: false });
    view.querySelector("button.csv-export").onclick = () => downloadCsv(el, "comparison.csv");
  };
  view.querySelector("#compare-draw").addEventListener("click", () => draw().catch(console.error));
  view.querySelector("#compare-series").addEventListener("change", () => draw().catch(console.error));
  if (state.jobs || state.sweep) draw().catch(console.error);
  return () => {};
}

// ---- router --------------------------------------------------------------------------------------------
function route() {
  // A one-time sign-in link (#login=CODE, printed by `dynascope serve`) is spent at once and leaves the address bar.
  const code = location.hash.match(/^#login=([\w-]+)$/)?.[1];
  if (code) {
    history.replaceState(null, "", "#/jobs");
    signInWithCode(code).then((me) => me ?? loadMe()).then(route);
    return;
  }
  cleanup();
  const [path, query] = (location.hash.slice(1) || "/jobs").split("?");
  const params = new URLSearchParams(query || "");
  const jobMatch = path.match(/^\/jobs\/(\d+)$/);
  if (!session.me) cleanup = renderSignIn(view, route);
  else if (path === "/account") cleanup = renderAccount(view);
  else if (jobMatch) cleanup = renderJob(jobMatch[1], params);
  else if (path === "/new") cleanup = renderNew(params);
  else if (path === "/compare") cleanup = renderCompare(params);
  else cleanup = renderJobs(params);
  document.title = `Dynascope · ${path.slice(1) || "jobs"}`;
}
async function start() {
  if (!location.hash.startsWith("#login=")) await loadMe();
  window.addEventListener("hashchange", route);
  window.addEventListener("dynascope:signed-out", () => { if (session.me) { session.me = null; loadMe().then(route); } });
  route();
}
start();
