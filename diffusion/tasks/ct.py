"""CT inpainting (DATA.md section 1): repair the blanked pixels of a 256x256 CT slice, given the mask, the tissue map
and the vertebra level. Scored by the mean absolute error over the whole image (lower is better).

Everything CT-specific lives here: the cases of a data root, the condition and the two predictor hooks (`encode`,
`decode`), the score, the overview figure's columns and the competition's request/response format."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel

from diffusion.codec import (
    BadInput,
    check_values,
    decode_field,
    encode_field,
    file_field,
)
from diffusion.data.ct import (
    NUM_VERTEBRA_LEVELS,
    SIZE,
    CTTrainDataset,
    list_ct_ids,
    load_ct_slices,
    read_slice,
)
from diffusion.metrics import image_mae
from diffusion.tasks.base import Case, Encoded, Example, Prediction, Task
from samplers.ensemble import reduce_ensemble

SPREAD_BINS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, np.inf)  # grey levels of ensemble spread (reliability)
TOP_SHARE = 0.1   # "most uncertain": this share of a slice's missing body pixels, by spread


def grey_to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 grey levels 0..255 -> [-1, 1]."""
    return x.float() / 127.5 - 1.0


def unit_to_grey(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> float grey levels in [0, 255]."""
    return ((x.clamp(-1, 1) + 1.0) * 127.5).clamp(0, 255)


class CTRequest(BaseModel):
    corrupted_image: str
    tissue_image: str
    mask_image: str
    vertebrae: int


class CTResponse(BaseModel):
    reconstructed_image: str


@dataclass(frozen=True)
class CTTask(Task):
    """CT inpainting. Target: the CT slice in [-1, 1]. Condition channels:
    known pixels (CT where known, 0 where missing), missing mask, body, torso fat."""

    name: str = "ct"
    folder: str = "ct-inpainting"
    marker: str = "corrupted"
    released: str = "ct_inpaint.safetensors"
    target_channels: int = 1
    cond_channels: int = 4
    num_classes: int = NUM_VERTEBRA_LEVELS   # vertebra levels; index num_classes is the null class
    metric: str = "mae"
    higher_is_better: bool = False
    overview_columns: tuple[str, ...] = ("corrupted", "prediction", "truth", "|error|", "uncertainty")
    overview_cmaps: tuple[str, ...] = ("gray", "gray", "gray", "magma", "viridis")
    service_name: str = "ct-inpainting"
    request_model = CTRequest
    response_model = CTResponse

    # --- model side ----------------------------------------------------------------------------------------
    def condition(self, known_grey: torch.Tensor, missing_mask: torch.Tensor, tissue: torch.Tensor) -> torch.Tensor:
        """(N, H, W) uint8 inputs -> (N, 4, H, W) float condition."""
        missing = missing_mask.float()
        known = grey_to_unit(known_grey) * (1 - missing)
        body = (tissue > 0).float()
        fat = (tissue == 255).float()
        return torch.stack([known, missing, body, fat], 1)

    def loss_weight(self, missing_mask: torch.Tensor, tissue: torch.Tensor) -> torch.Tensor:
        """1 on missing pixels inside the body (the only uncertain ones), 0 elsewhere. (N, 1, H, W)."""
        return ((missing_mask > 0) & (tissue > 0)).float().unsqueeze(1)

    def training_batch(self, batch: dict[str, torch.Tensor]):
        ct = batch["ct"]
        target = grey_to_unit(ct).unsqueeze(1)
        cond = self.condition(ct, batch["missing_mask"], batch["tissue"])
        weight = self.loss_weight(batch["missing_mask"], batch["tissue"])
        return target, cond, batch["vertebra"].long(), weight

    def known(self, target: torch.Tensor, cond: torch.Tensor) -> dict:
        """The pixels samplers replace by the noised truth (RePaint): the known CT, where the mask says known."""
        return {"x0": cond[:, :1], "mask": 1 - cond[:, 1:2]}

    def encode(self, inputs: dict, multiple: int) -> Encoded:
        """inputs: corrupted, missing_mask (0/1), tissue ((H, W) uint8) and vertebra (int)."""
        cond = self.condition(*(torch.from_numpy(np.ascontiguousarray(inputs[key]))[None]
                                for key in ("corrupted", "missing_mask", "tissue")))
        return Encoded(cond, torch.tensor([int(inputs["vertebra"])], dtype=torch.long), self.known(None, cond))

    def decode(self, x0: torch.Tensor, inputs: dict, sample: dict) -> Prediction:
        """The members' grey levels (known pixels kept, 0 outside the body), their per-pixel median and spread."""
        known_grey, missing, tissue = (torch.from_numpy(np.ascontiguousarray(inputs[key]))[None].expand(
            x0.shape[0], -1, -1) for key in ("corrupted", "missing_mask", "tissue"))
        grey = self.finalize(x0, known_grey, missing, tissue)
        reduced, spread = reduce_ensemble(grey, "median")
        return Prediction(image=reduced.numpy(), uncertainty=spread.numpy(), members=grey.numpy())

    def finalize(self, x0: torch.Tensor, known_grey: torch.Tensor, missing_mask: torch.Tensor,
                 tissue: torch.Tensor) -> torch.Tensor:
        """Samples in [-1, 1] (N, 1, H, W) -> float grey (N, H, W): known pixels kept exactly, outside body 0."""
        grey = unit_to_grey(x0[:, 0])
        grey = torch.where(missing_mask > 0, grey, known_grey.float())
        return torch.where(tissue > 0, grey, torch.zeros_like(grey))

    # --- data ----------------------------------------------------------------------------------------------
    def list_cases(self, root: Path, include_extra: bool = False) -> list[Case]:
        return [Case(sid, sid.split("_")[0]) for sid in list_ct_ids(root)]

    def has_truth(self, root: Path, cases: list[Case]) -> bool:
        return (Path(root) / "ct").is_dir()

    def read_case(self, root: Path, case: Case, with_truth: bool) -> Example:
        item = read_slice(root, case.id, with_truth)
        inputs = {"corrupted": item["corrupted"], "missing_mask": (item["mask"] > 0).astype(np.uint8),
                  "tissue": item["tissue"], "vertebra": item["vertebra"]}
        return Example(case, inputs, item.get("ct"))

    def training_dataset(self, root: Path, cases: list[Case], config: dict, progress: bool):
        dc = config["data"]
        slices = load_ct_slices(root, ids=[c.id for c in cases], need_truth=True, progress=progress)
        return CTTrainDataset(slices, crop_size=dc["crop_size"], generated_mask_prob=dc["generated_mask_prob"],
                              flip=dc["flip"], seed=config["seed"])

    # --- prediction and score ------------------------------------------------------------------------------
    def prediction_path(self, out: Path, case: Case) -> Path:
        return Path(out) / "reconstructed" / f"reconstructed_{case.id}.png"

    def score(self, image: np.ndarray, truth: np.ndarray) -> dict:
        return {"mae": image_mae(image, truth)}

    def overview_row(self, example: Example, prediction, image: np.ndarray, record: dict) -> list:
        truth = example.truth
        error = np.abs(image.astype(np.float32) - truth) if truth is not None else None
        return [example.inputs["corrupted"], image, truth, error, prediction.uncertainty]

    def uncertainty_stats(self, example: Example, prediction, image: np.ndarray) -> dict:
        """Over the missing pixels inside the body (the only ones predicted): (sum of |error|, pixels) for the 10 %
        with the largest ensemble spread and for the rest, and per spread bin (the reliability curve)."""
        where = (example.inputs["missing_mask"] > 0) & (example.inputs["tissue"] > 0)
        error = np.abs(image.astype(np.float64) - example.truth)[where]
        spread = prediction.uncertainty[where].astype(np.float64)
        order = np.argsort(-spread, kind="stable")
        top = np.zeros(len(order), bool)
        top[order[: int(np.ceil(TOP_SHARE * len(order)))]] = True
        stats = {"top": (float(error[top].sum()), int(top.sum())), "rest": (float(error[~top].sum()), int((~top).sum()))}
        bins = np.digitize(spread, SPREAD_BINS[1:-1])
        for k in range(len(SPREAD_BINS) - 1):
            stats[f"bin_{k}"] = (float(error[bins == k].sum()), int((bins == k).sum()))
        return stats

    has_intervals: bool = True

    def interval_region(self, example: Example) -> np.ndarray:
        """The missing pixels inside the body: the only ones predicted."""
        return (example.inputs["missing_mask"] > 0) & (example.inputs["tissue"] > 0)

    def uncertainty_summary(self, totals: dict[str, list[float]]) -> dict:
        """MAE of the most uncertain 10 % of the predicted pixels against the rest, and the reliability curve (MAE
        and share of pixels per spread bin): informative uncertainty has mae_top > mae_rest and a rising curve."""
        mae = {k: (num / den if den else None) for k, (num, den) in totals.items()}
        pixels = totals["top"][1] + totals["rest"][1]
        reliability = [{"spread_from": SPREAD_BINS[k], "spread_to": SPREAD_BINS[k + 1], "mae": mae[f"bin_{k}"],
                        "share": totals[f"bin_{k}"][1] / max(1, pixels)} for k in range(len(SPREAD_BINS) - 1)]
        ratio = mae["top"] / mae["rest"] if mae["top"] is not None and mae["rest"] else None
        return {"mae_top10": mae["top"], "mae_rest": mae["rest"], "ratio": ratio, "pixels": pixels,
                "reliability": reliability}

    # --- serving -------------------------------------------------------------------------------------------
    def parse_request(self, request: CTRequest) -> dict:
        images = {}
        for field in ("corrupted_image", "tissue_image", "mask_image"):
            image = decode_field(getattr(request, field), field)
            if image.shape != (SIZE, SIZE):
                raise BadInput(field, f"expected {SIZE}x{SIZE} pixels, got {image.shape[1]}x{image.shape[0]}")
            images[field] = image
        check_values(images["mask_image"], "mask_image", (0, 255))
        check_values(images["tissue_image"], "tissue_image", (0, 100, 255))
        if not 0 <= request.vertebrae < NUM_VERTEBRA_LEVELS:
            raise BadInput("vertebrae", f"{request.vertebrae} out of range 0..{NUM_VERTEBRA_LEVELS - 1}")
        return {"corrupted": images["corrupted_image"], "missing_mask": (images["mask_image"] > 0).astype(np.uint8),
                "tissue": images["tissue_image"], "vertebra": request.vertebrae}

    def encode_response(self, image: np.ndarray) -> dict:
        return {"reconstructed_image": encode_field(image)}

    def request_body(self, root: Path, case: Case) -> dict:
        root, sid = Path(root), case.id
        return {"corrupted_image": file_field(root / "corrupted" / f"corrupted_{sid}.png"),
                "tissue_image": file_field(root / "tissue" / f"tissue_{sid}.png"),
                "mask_image": file_field(root / "mask" / f"mask_{sid}.png"),
                "vertebrae": int((root / "vertebrae" / f"vertebrae_{sid}.txt").read_text().strip())}

    def warm_up_inputs(self) -> dict:
        blank = np.zeros((SIZE, SIZE), np.uint8)
        return {"corrupted": blank, "missing_mask": blank, "tissue": blank, "vertebra": 0}


TASK = CTTask()
