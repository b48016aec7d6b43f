// The kernel view (backend/figures/kernel.py): the empirical NTK's motion, alignment and scale over training,
// and the latest kernel of the sample's first examples.
import { sectionView } from "./figures.js";

export const kernelView = sectionView("kernel", "Neural tangent kernel");
