"""Fresh masks of the competition's kind: thick blobs and brush strokes covering 10-75% of the image."""
from __future__ import annotations

import cv2
import numpy as np


def _stroke(canvas: np.ndarray, rng: np.random.Generator, size: int) -> None:
    """A brush stroke: a random walk of segments with round joints and a random width."""
    width = int(rng.integers(size // 40 + 2, size // 8 + 3))
    x, y = rng.uniform(0, size, 2)
    angle = rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(3, 12))):
        angle += rng.normal(0, 0.8)
        length = rng.uniform(size / 20, size / 5)
        nx, ny = x + length * np.cos(angle), y + length * np.sin(angle)
        cv2.line(canvas, (int(x), int(y)), (int(nx), int(ny)), 1, width, cv2.LINE_8)
        cv2.circle(canvas, (int(nx), int(ny)), width // 2, 1, -1)
        x, y = np.clip(nx, 0, size - 1), np.clip(ny, 0, size - 1)


def _blob(canvas: np.ndarray, rng: np.random.Generator, size: int) -> None:
    """A blob: a few overlapping discs and ellipses around one centre."""
    cx, cy = rng.uniform(0, size, 2)
    for _ in range(int(rng.integers(2, 6))):
        ox, oy = rng.normal(0, size / 12, 2)
        axes = (int(rng.uniform(size / 20, size / 6)), int(rng.uniform(size / 20, size / 6)))
        cv2.ellipse(canvas, (int(cx + ox), int(cy + oy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)


def random_mask(rng: np.random.Generator, size: int = 256, coverage: tuple[float, float] = (0.11, 0.75)) -> np.ndarray:
    """(size, size) uint8 mask, 1 = missing, with a coverage drawn uniformly from `coverage`."""
    target = rng.uniform(*coverage)
    canvas = np.zeros((size, size), np.uint8)
    for _ in range(200):
        (_stroke if rng.random() < 0.5 else _blob)(canvas, rng, size)
        if canvas.mean() >= target:
            break
    return canvas
