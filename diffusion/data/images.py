"""PNG reading and writing with errors that name the file."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from diffusion.errors import DataError


def read_png(path: Path, *, grey: bool = True) -> np.ndarray:
    """Read a PNG as uint8: (H, W) when `grey`, else (H, W, 3) RGB. Raises DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file is missing")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DataError(f"{path}: not a readable image")
    return to_layout(image, grey=grey)


def decode_png(data: bytes, *, grey: bool = True, what: str = "image") -> np.ndarray:
    """Decode PNG bytes (e.g. from an HTTP request); raises DataError naming `what`."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise DataError(f"{what}: not a PNG file")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{what}: not a readable PNG")
    return to_layout(image, grey=grey)


def to_layout(image: np.ndarray, *, grey: bool) -> np.ndarray:
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8) if image.dtype != np.uint16 else (image >> 8).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim == 3:
        image = image[:, :, ::-1]  # BGR -> RGB
    if grey:
        return image[:, :, 0].copy() if image.ndim == 3 else image
    return np.repeat(image[:, :, None], 3, 2) if image.ndim == 2 else np.ascontiguousarray(image)


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W) grey or (H, W, 3) RGB -> PNG bytes."""
    image = np.ascontiguousarray(image.astype(np.uint8))
    if image.ndim == 3:
        image = np.ascontiguousarray(image[:, :, ::-1])
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def write_png(path: Path, image: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(image))


def values_problem(image: np.ndarray, allowed: tuple[int, ...]) -> str | None:
    """What is wrong with an image whose pixels may take only `allowed` values (a line without the file or field
    name, which the caller adds), or None."""
    bad = np.setdiff1d(np.unique(image), allowed)
    if not bad.size:
        return None
    return (f"values must be only {' and '.join(', '.join(map(str, allowed)).rsplit(', ', 1))}, "
            f"found {bad[:5].tolist()}")


def pad_to_multiple(image: np.ndarray, multiple: int, value: int) -> np.ndarray:
    """Pad (H, W) at the bottom and right to multiples of `multiple`; `crop_back` undoes it."""
    h, w = image.shape
    ph, pw = -h % multiple, -w % multiple
    return np.pad(image, ((0, ph), (0, pw)), constant_values=value) if ph or pw else image


def crop_back(padded: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return padded[..., : shape[0], : shape[1]]
