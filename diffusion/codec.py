"""The competition's request/response fields: base64 PNGs, and bad input that names the field (a 4xx, no traceback)."""
from __future__ import annotations

import base64
import binascii
from pathlib import Path

import numpy as np

from diffusion.data.images import decode_png, encode_png
from diffusion.errors import DataError


class BadInput(Exception):
    def __init__(self, field: str, problem: str, status: int = 422):
        super().__init__(f"{field}: {problem}")
        self.status = status


def decode_field(value: str, field: str, grey: bool = True) -> np.ndarray:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(field, "not valid base64") from None
    try:
        return decode_png(raw, grey=grey, what=field)
    except DataError as exc:
        raise BadInput(field, str(exc).split(": ", 1)[-1]) from None


def encode_field(image: np.ndarray) -> str:
    return base64.b64encode(encode_png(image)).decode("ascii")


def file_field(path: Path) -> str:
    """A PNG file on disk as a request field (its bytes, base64)."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")
