"""Tiny generated data in the competition's CT layout (tests never read the real data unless they say so)."""
from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import pytest

from diffusion.data.images import encode_png, write_png
from diffusion.data.masks import random_mask

REPO = Path(__file__).resolve().parent.parent


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


def b64(image: np.ndarray) -> str:
    return base64.b64encode(encode_png(image)).decode()


def ct_request(seed: int, vertebrae: int = 12) -> dict:
    """A CT inpainting request body in the competition's format, from a generated slice."""
    _, corrupted, mask, tissue = make_ct_slice(np.random.default_rng(seed))
    return {"corrupted_image": b64(corrupted), "tissue_image": b64(tissue), "mask_image": b64(mask),
            "vertebrae": vertebrae}


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


@pytest.fixture
def ct_root(tmp_path: Path) -> Path:
    """A data root holding ct-inpainting/ with 4 patients x 2 slices."""
    write_ct_layout(tmp_path / "data" / "ct-inpainting")
    return tmp_path / "data"


def train_two_steps(base: Path, config: str) -> Path:
    """Train `configs/<config>` for its two steps on the generated data under base/data; return the run folder."""
    import train_diffusion

    run = base / "run"
    assert train_diffusion.main(["--config", str(REPO / "configs" / config), "--out", str(run),
                                 "--data-root", str(base / "data")]) == 0
    return run


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory) -> Path:
    """A run folder from two training steps of configs/ct_tiny.yaml on generated data (shared by tests)."""
    base = tmp_path_factory.mktemp("tiny")
    write_ct_layout(base / "data" / "ct-inpainting")
    return train_two_steps(base, "ct_tiny.yaml")


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


@pytest.fixture
def tumor_root(tmp_path: Path) -> Path:
    """A data root holding tumor-segmentation/ with 3 patients and 2 controls."""
    write_tumor_layout(tmp_path / "data" / "tumor-segmentation")
    return tmp_path / "data"


@pytest.fixture(scope="session")
def trained_tumor_tiny(tmp_path_factory) -> Path:
    """A run folder from two training steps of configs/tumor_tiny.yaml on generated data."""
    base = tmp_path_factory.mktemp("tumor_tiny")
    write_tumor_layout(base / "data" / "tumor-segmentation")
    return train_two_steps(base, "tumor_tiny.yaml")
