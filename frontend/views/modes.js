// The deep linear modes view (backend/figures/modes.py): the network's strength along each singular mode of the
// data against Saxe et al.'s closed form, and how far its map is from decoupled.
import { sectionView } from "./figures.js";

export const modesView = sectionView("modes", "Deep linear modes");
