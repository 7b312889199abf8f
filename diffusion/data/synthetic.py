"""Generated data in the competition's layouts: tiny data for tests and the GPU smoke check (never real patients).

CT slices: an elliptic body with a fat rim, smooth texture, a random missing mask; PET MIPs: an inverted image
(background 255) with a body, a dark brain (not tumor) and a few dark round tumors with their labels."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from diffusion.data.images import write_png
from diffusion.data.masks import random_mask


def make_ct_slice(rng: np.random.Generator, size: int = 256):
    tissue = np.zeros((size, size), np.uint8)
    centre = (size // 2 + int(rng.integers(-10, 10)), size // 2 + int(rng.integers(-10, 10)))
    axes = (int(rng.integers(70, 100)), int(rng.integers(50, 80)))
    cv2.ellipse(tissue, centre, axes, 0, 0, 360, 255, -1)
    cv2.ellipse(tissue, centre, (axes[0] - 8, axes[1] - 8), 0, 0, 360, 100, -1)
    ct = np.where(tissue == 255, 60, np.where(tissue == 100, 130, 0)).astype(np.float32)
    ct += cv2.GaussianBlur(rng.normal(0, 25, (size, size)).astype(np.float32), (0, 0), 4) * (tissue > 0)
    ct = np.clip(ct, 0, 255).astype(np.uint8)
    missing = random_mask(rng, size)
    corrupted = np.where(missing > 0, 0, ct).astype(np.uint8)
    return ct, corrupted, missing * 255, tissue


def write_ct_layout(root: Path, patients: int = 4, slices: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for p in range(patients):
        for s in range(slices):
            sid = f"{p:03d}_{s}"
            ct, corrupted, mask, tissue = make_ct_slice(rng)
            write_png(root / "ct" / f"ct_{sid}.png", ct)
            write_png(root / "corrupted" / f"corrupted_{sid}.png", corrupted)
            write_png(root / "mask" / f"mask_{sid}.png", mask)
            write_png(root / "tissue" / f"tissue_{sid}.png", tissue)
            (root / "vertebrae").mkdir(parents=True, exist_ok=True)
            (root / "vertebrae" / f"vertebrae_{sid}.txt").write_text(str(int(rng.integers(0, 25))))
    return root


def make_pet_case(rng: np.random.Generator, height: int, tumors: int = 2):
    """A fake MIP-PET (inverted: background 255, body light grey, organs and tumors dark) and its {0,255} label."""
    image = np.full((height, 400), 255, np.uint8)
    cv2.ellipse(image, (200, height // 2), (90, height // 2 - 20), 0, 0, 360, 200, -1)     # body
    cv2.circle(image, (200, 40), 25, 40, -1)                                               # brain: dark, not tumor
    label = np.zeros((height, 400), np.uint8)
    for _ in range(tumors):
        c = (int(rng.integers(140, 260)), int(rng.integers(100, height - 60)))
        r = int(rng.integers(6, 16))
        cv2.circle(image, c, r, 30, -1)
        cv2.circle(label, c, r, 255, -1)
    return np.repeat(image[..., None], 3, 2), np.repeat(label[..., None], 3, 2)


def write_tumor_layout(root: Path, patients: int = 3, controls: int = 2, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for p in range(patients):
        image, label = make_pet_case(rng, int(rng.integers(300, 500)))
        write_png(root / "patients" / "imgs" / f"patient_{p:03d}.png", image)
        write_png(root / "patients" / "labels" / f"segmentation_{p:03d}.png", label)
    for c in range(controls):
        image, _ = make_pet_case(rng, int(rng.integers(300, 500)), tumors=0)
        write_png(root / "controls" / "imgs" / f"control_{c:03d}.png", image)
    return root
