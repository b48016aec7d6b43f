// Dynascope dashboard: hash routes #/jobs, #/new, #/jobs/<id>. Talks to the backend only through /api/v1.
import { renderAccount, renderSignIn, loadMe, session, signInWithCode } from "./account.js";
import { analysesSection } from "./analyses.js";
import { API, PLOT_CONFIG, TERMINAL, addExports, api, esc, plotLayout, themed } from "./common.js";
import { VIEWS } from "./views/index.js";
import { renderRuns } from "./runs.js";
import { phaseView } from "./views/phase.js";
import { sensitivityView } from "./views/sensitivity.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "diverged", "lost"];
const view = document.getElementById("view");
let cleanup = () => {};

const fmtDuration = (s) => (s == null ? "" : s < 60 ? `${s.toFixed(1)} s` : s < 3600 ? `${(s / 60).toFixed(1)} min` : `${(s / 3600).toFixed(1)} h`);
const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString() : "");

// ---- job list ------------------------------------------------------------------------------------------
const MODEL_KINDS = ["mlp", "cnn", "resnet", "transformer", "linear"];
const DATA_KINDS = ["digits", "iris", "wine", "breast_cancer", "gaussian_mixture", "teacher_student", "linear_teacher", "opposing_features", "text", "upload"];
const LIST_KEYS = ["status", "q", "sweep", "tag", "creator", "model", "data", "source", "after", "before", "sort", "offset"];

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
      <label>Source <select id="source-filter">${options(["server", "tracked"], state.source)}</select></label>
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
      ${state.sweep ? `<a id="compare-sweep-link" href="#/compare?sweep=${esc(state.sweep)}">Compare this sweep</a>
        <a id="runs-sweep-link" href="#/runs?sweep=${esc(state.sweep)}">Table of this sweep</a>` : ""}
      <label>Export as <select id="export-format"><option>parquet</option><option>csv</option></select></label>
      <a id="export-link" download>Export series</a>
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
  // The list's filters as the API takes them (the list and the export alike).
  const filters = () => {
    const p = new URLSearchParams();
    for (const [k, name] of [["status", "status"], ["q", "q"], ["sweep", "sweep_id"], ["tag", "tag"], ["creator", "creator"], ["model", "model"], ["data", "data"], ["source", "source"]]) if (state[k]) p.set(name, state[k]);
    if (state.after) p.set("created_after", `${state.after}T00:00:00Z`);
    if (state.before) p.set("created_before", `${state.before}T23:59:59.999Z`);
    return p;
  };
  // Every series of the jobs the filters select (or of the selected ones), as one long table (GET /export).
  const showExport = () => {
    const p = filters();
    p.set("format", view.querySelector("#export-format").value);
    if (selected.size) p.set("ids", [...selected].join(","));
    const link = view.querySelector("#export-link");
    link.href = `${API}/export?${p}`;
    link.textContent = selected.size ? `Export the ${selected.size} selected` : "Export series";
  };
  const showSelection = () => {
    view.querySelector("#bulk-cancel").disabled = view.querySelector("#bulk-delete").disabled = selected.size === 0;
    view.querySelector("#bulk-state").textContent = selected.size ? `${selected.size} selected` : "";
    showExport();
  };
  view.querySelector("#export-format").addEventListener("change", showExport);
  let timer;
  const load = async () => {
    const p = filters();
    for (const [k, v] of Object.entries({ limit, offset: state.offset, sort: state.sort })) p.set(k, v);
    showExport();
    const page = await api(`/jobs?${p}`);
    if (!alive) return;  // the user has moved on to another page meanwhile
    view.querySelector("#jobs-count").textContent = `${page.total} job${page.total === 1 ? "" : "s"}` +
      (page.total > limit ? `, ${state.offset + 1}–${Math.min(state.offset + limit, page.total)}` : "");
    view.querySelector("#prev-page").disabled = state.offset === 0;
    view.querySelector("#next-page").disabled = state.offset + limit >= page.total;
    view.querySelector("#jobs-table tbody").innerHTML = page.items.map((j) => `
      <tr class="job-row" data-id="${j.id}" tabindex="0">
        <td><input type="checkbox" class="select-job" data-id="${j.id}" ${selected.has(j.id) ? "checked" : ""} aria-label="select job ${j.id}"></td>
        <td>${j.id}</td><td><a href="#/jobs/${j.id}">${esc(j.name)}</a>${j.source === "tracked" ? ` <span class="tracked" title="trained in its own loop, reported by its tracker">tracked on ${esc(j.worker_host ?? "")}</span>` : ""}</td>
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
  filter("#source-filter", "source");
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
      const params = c.parameters == null ? "parameters counted by the worker when the job starts" : `${c.parameters.toLocaleString("en")} parameters`;
      const shape = c.input_shape == null ? "data described by the worker" : `input ${c.input_shape.join("×") || "tokens"} · ${c.outputs} output${c.outputs === 1 ? "" : "s"}`;
      state.textContent = `valid: ${c.jobs} job${c.jobs === 1 ? "" : "s"} · ${params} · ${shape}`;
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
// The page: the job's state, tags and notes, the options of its series charts (kept in the URL), its views
// (which the server names for this job: training, and one per probe or analysis kind it has), the analyses of
// its kept checkpoints, facts and spec. One event stream feeds them all.
function renderJob(id, params) {
  const options = { smooth: Math.min(0.999, Math.max(0, Number(params.get("smooth") ?? 0.6))), logx: params.get("logx") === "1",
    logy: params.get("logy") };  // "1": every series chart's y on a log scale, "0": none, absent: each chart's default (loss: log)
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
    <div id="job-views"></div>
    <div id="job-analyses"></div>
    <h2>Details</h2><dl class="facts" id="job-facts"></dl>
    <h2>Spec</h2><pre class="spec" id="job-spec"></pre>`;
  let job = null;
  const showJob = (j) => {
    job = { ...job, ...j };
    view.querySelector("#job-title").textContent = `Job ${job.id}: ${job.name}`;
    const st = view.querySelector("#job-status");
    st.textContent = job.status; st.className = `status ${job.status}`;
    view.querySelector("#progress-bar").value = job.progress;
    view.querySelector("#job-stage").textContent = `${(job.progress * 100).toFixed(1)} % · step ${job.step} · ${job.stage}`;
    view.querySelector("#job-error").textContent = job.error || "";
    view.querySelector("#cancel-job").disabled = TERMINAL.has(job.status) || job.cancel_requested;
    const where = job.source === "tracked"  // trained in its own loop: its host and framework, no worker attempts
      ? { "tracked on": job.worker_host, framework: job.spec?.tracked?.framework }
      : { attempts: `${job.attempts} of ${job.max_attempts}`, worker: job.worker_host };
    const facts = { parameters: job.parameters?.toLocaleString("en"), "time spent": job.timing, ...where, device: job.device,
      created: fmtTime(job.created_at), started: fmtTime(job.started_at), finished: fmtTime(job.finished_at) };
    view.querySelector("#job-facts").innerHTML = Object.entries(facts).map(([k, v]) => `<dt>${k}</dt><dd>${esc(v ?? "")}</dd>`).join("");
  };
  const summarize = () => api(`/jobs/${id}/results/summary`).then((s) => {
    if (!s.length) return;
    const last = s[s.length - 1].data;
    // Time per probe next to the training itself (known once the job has finished).
    const timing = last.train_seconds == null ? null : [`training ${last.train_seconds.toFixed(1)} s`,
      ...Object.entries(last.probe_seconds || {}).map(([k, v]) => `${k} ${v.toFixed(1)} s`)].join(" · ");
    showJob({ parameters: s[0].data.parameters, timing });
  }).catch(console.error);

  // The URL keeps the options of the series charts and each view's own state (ls…).
  const viewState = Object.fromEntries([...params].filter(([k]) => k.startsWith("ls")));
  const keepOptions = () => {
    const p = new URLSearchParams({ smooth: options.smooth });
    if (options.logx) p.set("logx", "1");
    if (options.logy != null) p.set("logy", options.logy);
    for (const [k, v] of Object.entries(viewState)) if (v) p.set(k, v);
    history.replaceState(null, "", `#/jobs/${id}?${p}`);
  };
  const optionListeners = [];
  const changed = () => { optionListeners.forEach((f) => f()); keepOptions(); };
  view.querySelector("#smoothing").addEventListener("input", (e) => {
    options.smooth = Number(e.target.value);
    view.querySelector("#smoothing-value").textContent = options.smooth;
    changed();
  });
  view.querySelector("#log-y").addEventListener("change", (e) => { options.logy = e.target.checked ? "1" : "0"; changed(); });
  view.querySelector("#log-x").addEventListener("change", (e) => { options.logx = e.target.checked; changed(); });

  let source = null;
  const mounted = new Map();  // view name → the mounted view
  const ctx = {
    jobId: id, params, options, live: () => job != null && !TERMINAL.has(job.status),
    setState: (state) => { Object.assign(viewState, state); keepOptions(); },
    onOptions: (f) => optionListeners.push(f),
    listen: () => listen(),
  };
  const parts = () => [...mounted.values(), analyses];
  // The views this job shows, each mounted once, in the server's order (training first: the first chart comes first).
  const mountViews = async () => {
    for (const v of await api(`/jobs/${id}/figures`)) {
      if (mounted.has(v.name) || !VIEWS[v.name]) continue;
      const box = document.createElement("div");
      box.id = `${v.name}-view`;
      view.querySelector("#job-views").append(box);
      const mountedView = VIEWS[v.name](box, { ...ctx, kinds: v.kinds });
      mounted.set(v.name, mountedView);
      await mountedView.refresh();
    }
  };
  let remount = null;
  const mountSoon = () => { clearTimeout(remount); remount = setTimeout(() => mountViews().catch(console.error), 500); };
  const dispatch = (type, data) => {
    parts().forEach((part) => part.onEvent(type, data));
    if (type === "analysis" || (type === "result" && data.kind.endsWith("_analysis"))) mountSoon();
  };
  const listen = () => {
    if (source && source.readyState !== EventSource.CLOSED) return;
    source = new EventSource(`${API}/jobs/${id}/events`);
    for (const type of ["metrics", "result", "analysis"]) source.addEventListener(type, (e) => dispatch(type, JSON.parse(e.data)));
    source.addEventListener("job", (e) => showJob(JSON.parse(e.data)));
    source.addEventListener("end", () => {
      source.close();
      summarize();
      dispatch("end", {});
      // The stream ends once the job and the analyses it knew of have ended; one asked for meanwhile is read again.
      analyses.refresh().then(() => { if (analyses.pending()) listen(); }).catch(console.error);
    });
  };
  const analyses = analysesSection(view.querySelector("#job-analyses"), ctx);
  // The views are drawn at once, not after the stream's hello: live points that arrive meanwhile only extend
  // the traces past the steps already drawn.
  listen();
  api(`/jobs/${id}`).then((j) => {
    showJob(j);
    view.querySelector("#job-tags").value = j.tags.join(", ");
    view.querySelector("#job-notes").value = j.notes ?? "";
    view.querySelector("#job-spec").textContent = JSON.stringify(j.spec, null, 2);
    if (j.source === "tracked") {  // its model lives in the user's code: no spec to clone, no checkpoints to analyse
      view.querySelector("#clone-job").hidden = true;
      view.querySelector("#job-analyses").hidden = true;
    }
    summarize();
  }).catch((err) => {
    source.close();
    view.innerHTML = `<h1>Job ${esc(id)}</h1><p class="error-text">${err.status === 404 ? "No such job." : esc(err)}</p>`;
  });
  mountViews().catch(console.error);

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
  return () => { source?.close(); clearTimeout(remount); parts().forEach((part) => part.stop()); };
}

// ---- compare runs --------------------------------------------------------------------------------------
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const dig = (obj, path) => path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);

// Seed groups: each group's mean with its band, as the server describes the figure (GET /compare/groups).
const BANDS = { std: "± σ", sem: "± standard error", minmax: "min – max" };

async function drawGroups(el, state, jobs) {
  const p = new URLSearchParams({ by: state.group, series: state.series, max_points: 2000, band: state.band, logy: state.logy });
  if (state.sweep && !state.jobs) p.set("sweep_id", state.sweep);
  else p.set("ids", jobs.map((j) => j.id).join(","));
  const { figure } = await api(`/compare/groups?${p}`);
  await Plotly.newPlot(el, figure.data, themed(figure.layout), PLOT_CONFIG);
  for (const [k, v] of Object.entries(figure.meta)) el.dataset[k] = v;
}

function renderCompare(params) {
  const state = { jobs: params.get("jobs") || "", sweep: params.get("sweep") || "", series: params.get("series") || "train/loss",
    legend: params.get("legend") || "", logy: params.get("logy") === "1", group: params.get("group") || "", band: params.get("band") || "std" };
  view.innerHTML = `
    <h1>Compare runs</h1>
    <div class="toolbar">
      <label>Jobs <input id="compare-jobs" placeholder="1,2,3" value="${esc(state.jobs)}"></label>
      <label>Sweep <input id="compare-sweep" size="5" value="${esc(state.sweep)}"></label>
      <label>Series <select id="compare-series"></select></label>
      <label>Legend by <input id="compare-legend" placeholder="optimizer.lr" value="${esc(state.legend)}"></label>
      <label>Group by <input id="compare-group" placeholder="optimizer.lr (the rest averaged)" value="${esc(state.group)}"></label>
      <label>Band <select id="compare-band">${Object.entries(BANDS).map(([v, label]) => `<option value="${v}" ${v === state.band ? "selected" : ""}>${label}</option>`).join("")}</select></label>
      <label><input id="compare-logy" type="checkbox" ${state.logy ? "checked" : ""}> log y</label>
      <button id="compare-draw">Draw</button>
      <a id="compare-report" download hidden>Report (HTML)</a>
    </div>
    <div class="chart">
      <div id="compare-plot" class="plot" role="img" aria-label="the chosen series of each job over steps"></div></div>
    <div id="phase-view"></div>
    <div id="sensitivity-view"></div>`;
  const el = view.querySelector("#compare-plot");
  const phaseState = Object.fromEntries(["metric", "px", "py", "sby"].map((k) => [k, params.get(k) || ""]));
  let phaseShown = null;
  const read = () => {
    state.jobs = view.querySelector("#compare-jobs").value.replace(/\s/g, "");
    state.sweep = view.querySelector("#compare-sweep").value.trim();
    state.series = view.querySelector("#compare-series").value || state.series;
    state.legend = view.querySelector("#compare-legend").value.trim();
    state.logy = view.querySelector("#compare-logy").checked;
    state.group = view.querySelector("#compare-group").value.replace(/\s/g, "");
    state.band = view.querySelector("#compare-band").value;
    const p = new URLSearchParams();
    for (const k of ["jobs", "sweep", "series", "legend", "group"]) if (state[k]) p.set(k, state[k]);
    if (state.group) p.set("band", state.band);
    if (state.logy) p.set("logy", "1");
    for (const [k, v] of Object.entries(phaseState)) if (v) p.set(k, v);
    history.replaceState(null, "", `#/compare?${p}`);
    // The sweep or the chosen runs as one HTML file: grouped charts, runs table, phase diagram, specs.
    const report = new URLSearchParams({ band: state.band });
    if (state.sweep && !state.jobs) report.set("sweep_id", state.sweep);
    if (state.jobs) report.set("ids", state.jobs);
    if (state.group) report.set("by", state.group);
    const link = view.querySelector("#compare-report");
    link.href = `${API}/compare/report.html?${report}`;
    link.hidden = !(state.sweep || state.jobs);
  };
  const draw = async () => {
    read();
    let jobs = [];
    if (state.sweep && phaseShown !== state.sweep) {
      phaseShown = state.sweep;
      const remember = (changed) => { Object.assign(phaseState, changed); read(); };
      phaseView(view.querySelector("#phase-view"), state.sweep, params, remember);
      sensitivityView(view.querySelector("#sensitivity-view"), state.sweep, params, remember);
    }
    if (state.sweep) {
      const sweep = await api(`/sweeps/${state.sweep}`);
      jobs = sweep.jobs;
      if (!state.legend) state.legend = Object.keys(sweep.grid).join(",");
      view.querySelector("#compare-legend").value = state.legend;
    }
    for (const id of state.jobs.split(",").filter(Boolean)) jobs.push(await api(`/jobs/${id}`));
    const names = new Set();
    const series = await Promise.all(jobs.map((j) => api(`/jobs/${j.id}/metrics?max_points=2000`)));
    series.forEach((m) => m.series.forEach((s) => names.add(s.name)));
    const select = view.querySelector("#compare-series");
    select.innerHTML = [...names].sort().map((n) => `<option ${n === state.series ? "selected" : ""}>${esc(n)}</option>`).join("");
    if (state.group) {
      await drawGroups(el, state, jobs);
      addExports(view, "comparison");
      return;
    }
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
    await Plotly.newPlot(el, traces, layout, PLOT_CONFIG);
    addExports(view, "comparison");
  };
  view.querySelector("#compare-draw").addEventListener("click", () => draw().catch(console.error));
  view.querySelector("#compare-band").addEventListener("change", () => draw().catch(console.error));
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
  else if (path === "/runs") cleanup = renderRuns(view, params);
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
