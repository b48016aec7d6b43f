// The instability view (backend/figures/instability.py): attention-logit growth, the output's log Z, the gradient's
// and the update's RMS against Adam's ε, with the start of each loss spike marked.
import { sectionView } from "./figures.js";

export const instabilityView = sectionView("instability", "Transformer instabilities");
