"""From the ensemble's tumor probability to the submitted mask: a threshold, a filter of small components (nnU-Net's
post-processing as a stage of its own), then each component trimmed to the pixels of at least a fraction of its peak
uptake (PET's habit of delineating a lesion at a share of its maximum); all three settings chosen out of the scored
patients by `eval.calibrate` / `eval.crossval`."""
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


def uptake_cut(mask: np.ndarray, image: np.ndarray, fraction: float) -> np.ndarray:
    """Keep, in each 8-connected component of a binary mask, only the pixels whose uptake (255 - image: the PET
    is dark where uptake is high) is at least `fraction` of the component's peak uptake: the network's region trimmed
    to the lesion as PET delineates it, at a share of its own maximum. `fraction` 0: the mask unchanged. Returns a
    mask of the mask's dtype."""
    if fraction <= 0 or not mask.any():
        return mask
    if image.shape != mask.shape:
        raise ValueError(f"uptake_cut: image {image.shape} and mask {mask.shape} differ in shape")
    n, labels = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)
    keep = kept_by_uptake(labels, n, 255 - image.astype(np.int16), fraction)
    return np.where(keep, mask, np.zeros_like(mask))


def kept_by_uptake(labels: np.ndarray, n: int, uptake: np.ndarray, fraction: float) -> np.ndarray:
    """The pixels of components 1..n-1 of a label image (0: background) whose `uptake` is at least `fraction` of
    their component's peak: the rule of `uptake_cut`, for callers that already hold the components."""
    inside = labels > 0
    peak = np.zeros(n, np.int16)
    np.maximum.at(peak, labels[inside], uptake[inside])
    return inside & (uptake >= fraction * peak[labels])


def tumor_mask(probability: np.ndarray, sample: dict, image: np.ndarray | None = None) -> np.ndarray:
    """Tumor probability -> the submitted {0, 255} mask: `sample.threshold`, then the component filter
    (`sample.min_component`), then the cut at `sample.uptake_fraction` of each component's peak uptake (needs the
    input `image`, (H, W) uint8 PET)."""
    mask = remove_small_components((probability > float(sample["threshold"])).astype(np.uint8) * 255,
                                   int(sample["min_component"]))
    fraction = float(sample.get("uptake_fraction", 0.0))
    if fraction > 0 and image is None:
        raise ValueError("tumor_mask: sample.uptake_fraction > 0 needs the input image")
    return uptake_cut(mask, image, fraction) if fraction > 0 else mask
