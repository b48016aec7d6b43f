// Helpers shared by the dashboard's pages and views.
export const API = "/api/v1";
export const TERMINAL = new Set(["succeeded", "failed", "cancelled", "diverged"]);

export const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

export async function api(path, options = {}) {
  const response = await fetch(API + path, options);
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw Object.assign(new Error(`HTTP ${response.status}`), { status: response.status, body });
  return body;
}

export function plotLayout(title, ylog) {
  const dark = matchMedia("(prefers-color-scheme: dark)").matches;
  return {
    title: { text: title }, margin: { t: 40, r: 10, b: 40, l: 55 }, xaxis: { title: { text: "step" } },
    yaxis: { type: ylog ? "log" : "linear" }, legend: { orientation: "h", y: -0.28 },
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: { color: dark ? "#e6edf3" : "#1b1f24" },
  };
}
