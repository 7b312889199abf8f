"""Tumor segmentation (DATA.md section 2): mark the tumor pixels of a whole-body MIP-PET image (width 400, height up
to 991). Scored by the Dice coefficient per image, averaged over the patients (higher is better).

Everything tumor-specific lives here: the cases (patients, and healthy controls as extra negatives), the condition,
the two predictor hooks (`encode`, `decode`), the score, the overview figure and the competition's request/response format."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from pydantic import BaseModel

from diffusion.codec import BadInput, decode_field, encode_field, file_field
from diffusion.data.images import read_png, write_png
from diffusion.data.tumor import (
    MAX_HEIGHT,
    MAX_WIDTH,
    TumorTrainDataset,
    crop_back,
    list_tumor_cases,
    load_tumor_cases,
    pad_to_multiple,
    read_tumor_case,
)
from diffusion.metrics import dice_score, tp_fp_fn
from diffusion.tasks.base import Case, Encoded, Example, Prediction, Task
from samplers.ensemble import reduce_ensemble

HIGH_UNCERTAINTY = 0.1   # ensemble spread of the tumor probability above which a pixel counts as uncertain


class TumorRequest(BaseModel):
    img: str


class TumorResponse(BaseModel):
    img: str


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop the 8-connected components of a binary mask with fewer than `min_size` pixels (the strong public
    entries' post-processing; the size is chosen on calibration patients). Returns a mask of the same dtype."""
    if min_size <= 1 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_size
    return np.where(keep[labels], mask, np.zeros_like(mask))


def tumor_mask(probability: np.ndarray, sample: dict) -> np.ndarray:
    """Tumor probability -> the submitted {0, 255} mask: `sample.threshold`, then the component filter
    (`sample.min_component`)."""
    return remove_small_components((probability > float(sample["threshold"])).astype(np.uint8) * 255,
                                   int(sample["min_component"]))


def outcome_colours(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RGB: true positives white, false positives red, false negatives blue."""
    p, t = prediction > 0, truth > 0
    rgb = np.zeros((*p.shape, 3), np.uint8)
    rgb[p & t], rgb[p & ~t], rgb[~p & t] = (255, 255, 255), (230, 40, 40), (40, 90, 255)
    return rgb


def case_files(root: Path, case: Case) -> tuple[Path, Path | None]:
    """(image, label or None) of a case: patients/imgs/patient_PPP.png with patients/labels/segmentation_PPP.png,
    controls/imgs/control_CCC.png (no label file: the truth is empty)."""
    root = Path(root)
    number = case.id.split("_", 1)[1]
    if case.extra:
        return root / "controls" / "imgs" / f"{case.id}.png", None
    return root / "patients" / "imgs" / f"{case.id}.png", root / "patients" / "labels" / f"segmentation_{number}.png"


@dataclass(frozen=True)
class TumorTask(Task):
    """Tumor segmentation. Target: the tumor mask in [-1, 1]. Condition channels: uptake (the inverted PET
    intensity in [-1, 1], high = dark in the PNG) and the vertical position in the whole image in [-1, 1]
    (rows normalised by the competition's maximum height: brain at the top, bladder at the bottom); with
    `data.position_channel: false` the position channel is zeros (same channel count, so a model with it can be
    started from one without it and back)."""

    name: str = "tumor"
    folder: str = "tumor-segmentation"
    marker: str = "patients"
    released: str = "tumor_seg.safetensors"
    target_channels: int = 1
    cond_channels: int = 2
    num_classes: int = 0          # no class labels
    metric: str = "dice"
    higher_is_better: bool = True
    extra_name: str = "control"
    decision_settings: tuple[str, ...] = ("threshold", "min_component")
    tumor_weight: float = 1.0     # loss weight of a tumor pixel relative to background (~1% of pixels are tumor)
    position_channel: bool = True  # the vertical-position condition channel (False: zeros)
    overview_columns: tuple[str, ...] = ("PET", "truth", "prediction (TP white, FP red, FN blue)", "uncertainty")
    overview_cmaps: tuple[str, ...] = ("gray", "gray", "rgb", "viridis")
    service_name: str = "tumor-segmentation"
    request_model = TumorRequest
    response_model = TumorResponse

    def with_options(self, data_config: dict) -> TumorTask:
        return replace(self, tumor_weight=float(data_config.get("tumor_weight", self.tumor_weight)),
                       position_channel=bool(data_config.get("position_channel", self.position_channel)))

    # --- model side ----------------------------------------------------------------------------------------
    def condition(self, image: torch.Tensor, row0: torch.Tensor) -> torch.Tensor:
        """(N, H, W) uint8 PET and (N,) first rows -> (N, 2, H, W)."""
        n, h, w = image.shape
        uptake = 1.0 - image.float() / 127.5
        rows = row0.view(n, 1).float() + torch.arange(h, dtype=torch.float32).view(1, h)
        position = (rows / MAX_HEIGHT * 2 - 1).view(n, h, 1).expand(n, h, w)
        if not self.position_channel:
            position = torch.zeros_like(position)
        return torch.stack([uptake, position], 1)

    def encode(self, inputs: dict, multiple: int) -> Encoded:
        """inputs: image, (H, W) uint8 PET. The whole image is padded to the network's multiple (with background)."""
        padded = pad_to_multiple(inputs["image"], multiple, 255)
        return Encoded(self.condition(torch.from_numpy(np.ascontiguousarray(padded))[None],
                                      torch.zeros(1, dtype=torch.long)))

    def decode(self, x0: torch.Tensor, inputs: dict, sample: dict) -> Prediction:
        """The members' masks cropped back to the image, read as probabilities (x0 + 1) / 2, averaged into the tumor
        probability (their spread: the uncertainty) and thresholded."""
        members = crop_back((x0[:, 0].clamp(-1, 1) + 1) / 2, inputs["image"].shape)
        probability, spread = reduce_ensemble(members, "mean")
        probability = probability.numpy()
        return Prediction(image=tumor_mask(probability, sample), uncertainty=spread.numpy(), probability=probability)

    def training_batch(self, batch: dict[str, torch.Tensor]):
        target = (batch["label"].float() * 2 - 1).unsqueeze(1)
        cond = self.condition(batch["image"], batch["row0"])
        weight = 1.0 + (self.tumor_weight - 1.0) * batch["label"].float().unsqueeze(1)
        return target, cond, None, weight

    # --- data ----------------------------------------------------------------------------------------------
    def list_cases(self, root: Path, include_extra: bool = False) -> list[Case]:
        return [Case(cid, cid, control) for cid, _, _, control in list_tumor_cases(root, include_extra)]

    def has_truth(self, root: Path, cases: list[Case]) -> bool:
        return all(case.extra or case_files(root, case)[1].is_file() for case in cases)

    def read_case(self, root: Path, case: Case, with_truth: bool) -> Example:
        image_path, label_path = case_files(root, case)
        image, label = read_tumor_case(image_path, label_path if with_truth else None)
        if with_truth and label is None:  # a control: nothing to find
            label = np.zeros_like(image)
        return Example(case, {"image": image}, label)

    def training_dataset(self, root: Path, cases: list[Case], config: dict, progress: bool):
        dc = config["data"]
        data = load_tumor_cases(root, include_controls=any(c.extra for c in cases), need_truth=True,
                                progress=progress, ids=[c.id for c in cases])
        return TumorTrainDataset(data, crop_size=dc["crop_size"], tumor_crop_prob=dc["tumor_crop_prob"],
                                 flip=dc["flip"], seed=config["seed"], control_fraction=dc["control_fraction"],
                                 intensity_aug=dc["intensity_aug"], synthetic_fraction=dc["synthetic_fraction"],
                                 synthetic_max=dc["synthetic_max"], zoom=dc["zoom"], rotate=dc["rotate"],
                                 crop_width=dc["crop_width"])

    # --- prediction and score ------------------------------------------------------------------------------
    def output_image(self, prediction) -> np.ndarray:
        return prediction.image

    def prediction_path(self, out: Path, case: Case) -> Path:
        name = f"{case.id}_segmentation.png" if case.extra else f"segmentation_{case.id.split('_', 1)[1]}.png"
        return Path(out) / "predictions" / name

    def write_prediction(self, out: Path, case: Case, image: np.ndarray) -> None:
        write_png(self.prediction_path(out, case), np.repeat(image[..., None], 3, 2))

    def read_prediction(self, out: Path, case: Case) -> np.ndarray:
        return read_png(self.prediction_path(out, case))

    def score(self, image: np.ndarray, truth: np.ndarray) -> dict:
        tp, fp, fn = tp_fp_fn(image, truth)
        return {"dice": dice_score(image, truth), "tp": tp, "fp": fp, "fn": fn}

    def uncertainty_stats(self, example: Example, prediction, image: np.ndarray) -> dict:
        """(wrong pixels, pixels) where the ensemble's spread is low and where it is high (> 0.1)."""
        wrong = (image > 0) != (example.truth > 0)
        high = prediction.uncertainty > HIGH_UNCERTAINTY
        return {key: (int(wrong[where].sum()), int(where.sum())) for key, where in (("low", ~high), ("high", high))}

    def uncertainty_summary(self, totals: dict[str, list[float]]) -> dict:
        """Error rates on the low- and high-uncertainty pixels, and the share of high-uncertainty pixels."""
        out = {f"error_rate_{k}": (e / n if n else None) for k, (e, n) in totals.items()}
        out["high_share"] = totals["high"][1] / max(1, totals["high"][1] + totals["low"][1])
        return out

    def overview_row(self, example: Example, prediction, image: np.ndarray, record: dict) -> list:
        truth = example.truth
        return [example.inputs["image"], None if truth is None else truth * 255,
                image if truth is None else outcome_colours(image, truth), prediction.uncertainty]

    # --- serving -------------------------------------------------------------------------------------------
    def parse_request(self, request: TumorRequest) -> dict:
        rgb = decode_field(request.img, "img", grey=False)
        h, w = rgb.shape[:2]
        if not (1 <= h <= MAX_HEIGHT and 1 <= w <= MAX_WIDTH):
            raise BadInput("img", f"{w}x{h} pixels is outside the competition's bounds (width <= {MAX_WIDTH}, "
                                  f"height <= {MAX_HEIGHT})")
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise BadInput("img", "the three colour channels must be identical (a grey PET MIP)")
        return {"image": rgb[..., 0]}

    def encode_response(self, image: np.ndarray) -> dict:
        return {"img": encode_field(np.repeat(image[..., None], 3, 2))}

    def request_body(self, root: Path, case: Case) -> dict:
        return {"img": file_field(case_files(root, case)[0])}

    def warm_up_inputs(self) -> dict:
        return {"image": np.full((MAX_HEIGHT, MAX_WIDTH), 255, np.uint8)}


TASK = TumorTask()
