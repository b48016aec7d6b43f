// Helpers shared by the dashboard's pages and views.
export const API = "/api/v1";
export const TERMINAL = new Set(["succeeded", "failed", "cancelled", "diverged", "lost"]);

export const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

// The session's CSRF token (from /auth/me or sign-in), sent with every state-changing request.
let csrfToken = null;
export const setCsrfToken = (token) => { csrfToken = token; };

export async function api(path, options = {}) {
  const method = (options.method || "GET").toUpperCase();
  const headers = { ...(options.headers || {}) };
  if (csrfToken && !["GET", "HEAD"].includes(method)) headers["x-csrf-token"] = csrfToken;
  const response = await fetch(API + path, { ...options, headers, credentials: "same-origin" });
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (response.status === 401 && path !== "/auth/login") window.dispatchEvent(new Event("dynascope:signed-out"));
  if (!response.ok) throw Object.assign(new Error(`HTTP ${response.status}`), { status: response.status, body });
  return body;
}

// A readable line from an API error: the detail's message (or each field's), else the status.
export const errorText = (err) => {
  const detail = err?.body?.detail;
  if (Array.isArray(detail)) return detail.map((e) => `${(e.loc || []).slice(1).join(".") || "body"}: ${e.msg}`).join("; ");
  return detail || err?.message || String(err);
};

// The page starts with plotly.js's cartesian bundle (a third of the full one to parse); the 3-D surface needs
// the full bundle, loaded the first time it is asked for. It replaces the global Plotly.
let fullBundle = null;
export function fullPlotly() {
  fullBundle ??= new Promise((resolve, reject) => {
    const script = Object.assign(document.createElement("script"), { src: "/static/vendor/plotly.min.js", onload: resolve, onerror: reject });
    document.head.append(script);
  });
  return fullBundle;
}

// Every chart is drawn with this config.
export const PLOT_CONFIG = { responsive: true, displaylogo: false };

// The colour theme over a figure's layout (the server's figures carry none: the report has its own).
export function themed(layout) {
  const dark = matchMedia("(prefers-color-scheme: dark)").matches;
  return { ...layout, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: { ...(layout.font || {}), color: dark ? "#e6edf3" : "#1b1f24" } };
}

// The house layout, for the charts drawn here rather than described by the server (comparisons, phase diagrams).
export function plotLayout(title, ylog) {
  return themed({
    title: { text: title }, margin: { t: 40, r: 10, b: 40, l: 55 }, xaxis: { title: { text: "step" } },
    yaxis: { type: ylog ? "log" : "linear" }, legend: { orientation: "h", y: -0.28 },
  });
}

export function download(text, filename, type) {
  const link = Object.assign(document.createElement("a"), { href: URL.createObjectURL(new Blob([text], { type })), download: filename });
  link.click();
  URL.revokeObjectURL(link.href);
}

// A chart's data as drawn: CSV (series, x, y; with a z column for heat maps and surfaces, x and y their
// coordinates) or its traces as JSON. The columns are named by the chart's axes.
export function chartData(el, format) {
  const traces = (el.data || []).map((t) => ({ name: t.name ?? "", type: t.type ?? "scatter", x: Array.from(t.x ?? []), y: Array.from(t.y ?? []), z: t.z }));
  if (format === "json") return JSON.stringify(traces);
  const title = (axis) => el.layout?.[axis]?.title?.text;
  const gridded = traces.some((t) => t.z);
  const rows = [gridded ? `series,${title("xaxis") || "x"},${title("yaxis") || "y"},z` : `series,${title("xaxis") || "x"},value`];
  for (const t of traces) {
    if (t.z) t.z.forEach((row, i) => row.forEach((v, j) => rows.push(`"${t.name}",${t.x[j] ?? j},${t.y[i] ?? i},${v ?? ""}`)));
    else t.x.forEach((x, i) => rows.push(gridded ? `"${t.name}",${x},${t.y[i] ?? ""},` : `"${t.name}",${x},${t.y[i] ?? ""}`));
  }
  return rows.join("\n") + "\n";
}

// CSV and JSON buttons before every chart of a container (PNG is in each chart's own toolbar).
export function addExports(container, prefix) {
  for (const el of container.querySelectorAll(".plot[id]")) {
    if (el.previousElementSibling?.classList.contains("exports")) continue;
    const bar = document.createElement("div");
    bar.className = "exports";
    bar.innerHTML = ["csv", "json"].map((f) => `<button class="${f}-export" data-format="${f}" data-for="${el.id}" aria-label="export ${el.id} as ${f.toUpperCase()}">${f.toUpperCase()}</button>`).join(" ");
    bar.addEventListener("click", (e) => {
      const format = e.target.dataset.format;
      if (format) download(chartData(el, format), `${prefix}-${el.id}.${format}`, format === "csv" ? "text/csv" : "application/json");
    });
    el.before(bar);
  }
}
