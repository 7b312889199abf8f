"""From the ensemble's tumor probability to the submitted mask: a threshold, then a filter of small components
(nnU-Net's post-processing as a stage of its own; both settings chosen out of the scored patients by
`eval.calibrate` / `eval.crossval`)."""
from __future__ import annotations

import cv2
import numpy as np


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop the 8-connected components of a binary mask with fewer than `min_size` pixels (the strong public
    entries' post-processing). Returns a mask of the same dtype."""
    if min_size <= 1 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_size
    return np.where(keep[labels], mask, np.zeros_like(mask))


def tumor_mask(probability: np.ndarray, sample: dict) -> np.ndarray:
    """Tumor probability -> the submitted {0, 255} mask: `sample.threshold`, then the component filter
    (`sample.min_component`)."""
    return remove_small_components((probability > float(sample["threshold"])).astype(np.uint8) * 255,
                                   int(sample["min_component"]))
