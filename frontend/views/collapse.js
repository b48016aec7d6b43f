// The neural-collapse view (backend/figures/collapse.py): NC1–NC4 over training and the latest cosines of the
// centred class means.
import { sectionView } from "./figures.js";

export const collapseView = sectionView("collapse", "Neural collapse");
