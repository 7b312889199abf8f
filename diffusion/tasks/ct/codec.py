"""The competition's CT request and response: the four inputs as base64 PNGs and an integer, checked with the
layout's rules (a bad field is a 4xx naming it); the answer as one base64 PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel

from diffusion.codec import BadInput, decode_field, encode_field, file_field
from diffusion.tasks.base import Case, Codec
from diffusion.tasks.ct.layout import (
    MASK_VALUES,
    SIZE,
    TISSUE_VALUES,
    slice_files,
    slice_problem,
    vertebra_problem,
)


class CTRequest(BaseModel):
    corrupted_image: str
    tissue_image: str
    mask_image: str
    vertebrae: int


class CTResponse(BaseModel):
    reconstructed_image: str


FIELDS = {"corrupted_image": None, "tissue_image": TISSUE_VALUES, "mask_image": MASK_VALUES}  # field: allowed values


class CTCodec(Codec):
    service_name = "ct-inpainting"
    request_model = CTRequest
    response_model = CTResponse

    def parse_request(self, request: CTRequest) -> dict:
        images = {}
        for field, allowed in FIELDS.items():
            images[field] = decode_field(getattr(request, field), field)
            if problem := slice_problem(images[field], allowed):
                raise BadInput(field, problem)
        if problem := vertebra_problem(request.vertebrae):
            raise BadInput("vertebrae", problem)
        return {"corrupted": images["corrupted_image"], "missing_mask": (images["mask_image"] > 0).astype(np.uint8),
                "tissue": images["tissue_image"], "vertebra": request.vertebrae}

    def encode_response(self, image: np.ndarray) -> dict:
        return {"reconstructed_image": encode_field(image)}

    def request_body(self, root: Path, case: Case) -> dict:
        files = slice_files(root, case.id)
        return {"corrupted_image": file_field(files["corrupted"]), "tissue_image": file_field(files["tissue"]),
                "mask_image": file_field(files["mask"]), "vertebrae": int(files["vertebrae"].read_text().strip())}

    def warm_up_inputs(self) -> dict:
        blank = np.zeros((SIZE, SIZE), np.uint8)
        return {"corrupted": blank, "missing_mask": blank, "tissue": blank, "vertebra": 0}
