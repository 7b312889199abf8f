"""The competition's tumor request and response: one base64 PNG each way (RGB with identical channels), checked with
the layout's rule (a bad image is a 4xx naming the field)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel

from diffusion.codec import BadInput, decode_field, encode_field, file_field
from diffusion.tasks.base import Case, Codec
from diffusion.tasks.tumor.layout import MAX_HEIGHT, MAX_WIDTH, case_files, pet_problem


class TumorRequest(BaseModel):
    img: str


class TumorResponse(BaseModel):
    img: str


class TumorCodec(Codec):
    service_name = "tumor-segmentation"
    request_model = TumorRequest
    response_model = TumorResponse

    def parse_request(self, request: TumorRequest) -> dict:
        rgb = decode_field(request.img, "img", grey=False)
        if problem := pet_problem(rgb):
            raise BadInput("img", problem)
        return {"image": rgb[..., 0]}

    def encode_response(self, image: np.ndarray) -> dict:
        return {"img": encode_field(np.repeat(image[..., None], 3, 2))}

    def request_body(self, root: Path, case: Case) -> dict:
        return {"img": file_field(case_files(root, case)[0])}

    def warm_up_inputs(self) -> dict:
        return {"image": np.full((MAX_HEIGHT, MAX_WIDTH), 255, np.uint8)}
