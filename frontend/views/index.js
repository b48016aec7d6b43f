// The views of a job, one module each, by the names of backend/figures (FIGURES): the server says which views
// a job shows (GET /jobs/<id>/figures), the job page mounts these. Each is view(container, ctx) → { refresh,
// onEvent(type, data), stop } with ctx = { jobId, kinds (the result kinds it draws), params, setState, live, options, onOptions }.
import { collapseView } from "./collapse.js";
import { gradstatsView } from "./gradstats.js";
import { hessianView } from "./hessian.js";
import { instabilityView } from "./instability.js";
import { kernelView } from "./kernel.js";
import { landscapeView } from "./landscape.js";
import { modesView } from "./modes.js";
import { representationsView } from "./representations.js";
import { signalsView } from "./signals.js";
import { trainingView } from "./training.js";

export const VIEWS = {
  training: trainingView,
  hessian: hessianView,
  gradstats: gradstatsView,
  signals: signalsView,
  landscape: landscapeView,
  collapse: collapseView,
  representations: representationsView,
  kernel: kernelView,
  modes: modesView,
  instability: instabilityView,
};
