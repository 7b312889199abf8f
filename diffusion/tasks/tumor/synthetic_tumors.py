"""Synthetic tumors on healthy controls: the small-data lever of the strong public entries (DATA.md, RESEARCH.md).

Tumor regions are cut from the training patients (each connected component of a label: the donor's PET uptake in
its bounding box and the component's mask) and pasted into healthy controls, inside the control's body, near the
place (relative row and column) where the donor had it, optionally scaled and with its uptake scaled; the pasted
components are the new label. A MIP is a maximum projection, so a pasted tumor adds uptake as a maximum: the
control keeps its own uptake wherever it is higher. A soft edge (a blurred copy of the mask, capped by the mask's
own value 1 inside it) blends the donor's rim into the control.

Everything is a function of the generator it is given: the training dataset seeds one from its (seed, epoch, index)
key, so a synthetic item is as reproducible as every other item.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class TumorPatch:
    """One tumor region cut from a training patient."""

    uptake: np.ndarray         # (h, w) float32 uptake in [0, 1] of the donor's bounding box (1 = darkest)
    mask: np.ndarray           # (h, w) uint8 {0, 1}: the component
    center: tuple[float, float]  # the component's centre as (row / image height, column / image width)
    source: str                # the donor's case id


def uptake_of(image: np.ndarray) -> np.ndarray:
    """A uint8 MIP (255 = no uptake) -> uptake in [0, 1]."""
    return (255.0 - image.astype(np.float32)) / 255.0


def tumor_patches(ids: list[str], images: list[np.ndarray], labels: list[np.ndarray], min_pixels: int = 8
                  ) -> list[TumorPatch]:
    """Every connected tumor component of at least `min_pixels` pixels of the given (training) cases."""
    patches = []
    for case_id, image, label in zip(ids, images, labels):
        count, components, stats, centroids = cv2.connectedComponentsWithStats(label.astype(np.uint8), connectivity=8)
        h, w = image.shape
        for k in range(1, count):
            x, y, bw, bh, area = stats[k]
            if area < min_pixels:
                continue
            mask = (components[y:y + bh, x:x + bw] == k).astype(np.uint8)
            patches.append(TumorPatch(uptake_of(image[y:y + bh, x:x + bw]), mask,
                                      (float(centroids[k][1]) / h, float(centroids[k][0]) / w), case_id))
    return patches


def body_mask(image: np.ndarray, level: int = 245) -> np.ndarray:
    """The body of a MIP as a {0, 1} mask: pixels with some uptake (darker than `level`), closed, holes filled,
    the largest component kept."""
    inside = (image < level).astype(np.uint8)
    inside = cv2.morphologyEx(inside, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    count, components, stats, _ = cv2.connectedComponentsWithStats(inside, connectivity=8)
    if count <= 1:
        return inside
    body = (components == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    filled = body.copy()  # holes: what a flood fill from outside does not reach
    padded = np.pad(1 - body, 1, constant_values=1)
    flood = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(padded, flood, (0, 0), 2)
    filled[padded[1:-1, 1:-1] == 1] = 1
    return filled


def resized(patch: TumorPatch, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The patch's uptake and mask at `scale` (at least 1x1)."""
    h, w = patch.mask.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return patch.uptake, patch.mask
    return (cv2.resize(patch.uptake, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(patch.mask, size, interpolation=cv2.INTER_NEAREST))


def paste_tumors(image: np.ndarray, patches: list[TumorPatch], rng: np.random.Generator, max_tumors: int = 3,
                 zoom: float = 0.25, gain: float = 0.3, jitter: float = 0.05, edge_sigma: float = 1.0,
                 tries: int = 20) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Paste 1..`max_tumors` tumors into a control image (uint8 MIP). Returns (new image, its {0, 1} label,
    the placements: patch index, top-left corner, scale, gain). A tumor is placed near its donor's relative
    position (Gaussian jitter of `jitter` x the image size, mirrored left-right half the time), scaled by a
    log-uniform factor in [1 / (1 + zoom), 1 + zoom], its uptake multiplied by U(1 - gain, 1 + gain); a placement
    whose mask leaves the control's body is redrawn (up to `tries` times, then that tumor is skipped)."""
    h, w = image.shape
    body = body_mask(image)
    uptake = uptake_of(image)
    label = np.zeros((h, w), np.uint8)
    placements = []
    for _ in range(int(rng.integers(1, max_tumors + 1))):
        index = int(rng.integers(len(patches)))
        patch = patches[index]
        scale = float(np.exp(rng.uniform(-np.log1p(zoom), np.log1p(zoom)))) if zoom else 1.0
        factor = float(rng.uniform(1 - gain, 1 + gain)) if gain else 1.0
        patch_uptake, mask = resized(patch, scale)
        ph, pw = mask.shape
        if ph > h or pw > w:
            continue
        row, col = patch.center
        if rng.random() < 0.5:
            col = 1.0 - col
        for _ in range(tries):
            cy = row * h + rng.normal(0, jitter * h)
            cx = col * w + rng.normal(0, jitter * w)
            y, x = int(round(cy - ph / 2)), int(round(cx - pw / 2))
            if 0 <= y <= h - ph and 0 <= x <= w - pw and body[y:y + ph, x:x + pw][mask > 0].all():
                break
        else:
            continue
        soft = mask.astype(np.float32)
        if edge_sigma:
            soft = np.maximum(soft, cv2.GaussianBlur(soft, (0, 0), edge_sigma))
        region = uptake[y:y + ph, x:x + pw]
        region[...] = np.maximum(region, np.clip(soft * patch_uptake * factor, 0.0, 1.0))
        label[y:y + ph, x:x + pw] |= mask
        placements.append({"patch": index, "y": y, "x": x, "scale": scale, "gain": factor})
    pasted = np.round(255.0 - 255.0 * uptake).astype(np.uint8)
    return pasted, label, placements
