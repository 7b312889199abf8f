"""Tiny generated data in the competition's CT layout (tests never read the real data unless they say so)."""
from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from diffusion.data.images import encode_png
from diffusion.data.synthetic import make_ct_slice, make_pet_case, write_ct_layout, write_tumor_layout  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


def b64(image: np.ndarray) -> str:
    return base64.b64encode(encode_png(image)).decode()


def ct_request(seed: int, vertebrae: int = 12) -> dict:
    """A CT inpainting request body in the competition's format, from a generated slice."""
    _, corrupted, mask, tissue = make_ct_slice(np.random.default_rng(seed))
    return {"corrupted_image": b64(corrupted), "tissue_image": b64(tissue), "mask_image": b64(mask),
            "vertebrae": vertebrae}


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


def lr_by_step(run: Path) -> dict[int, float]:
    """The logged learning rate of a run folder, by optimiser step."""
    import json

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in rows if "lr" in r}
