"""Tumor segmentation (DATA.md section 2): mark the tumor pixels of a whole-body MIP-PET image (width 400, height up
to 991). Scored by the Dice coefficient per image, averaged over the patients (higher is better).

The model side of the task: the condition, the training batch, the predictor's two hooks (`encode`, `decode`) and the
score. Its data on disk is `layout.py` (healthy controls are its extra cases), the training crops `dataset.py`, the
threshold, component filter and uptake cut `postprocess.py`, its HTTP format `codec.py`, its reports `report.py`."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from diffusion.data.images import crop_back, pad_to_multiple
from diffusion.metrics import dice_score, tp_fp_fn
from diffusion.tasks.base import Case, Encoded, Prediction, Task
from diffusion.tasks.tumor.codec import TumorCodec
from diffusion.tasks.tumor.dataset import TumorTrainDataset
from diffusion.tasks.tumor.layout import MAX_HEIGHT, TumorLayout, load_tumor_cases
from diffusion.tasks.tumor.postprocess import tumor_mask
from diffusion.tasks.tumor.report import TumorReport
from samplers.ensemble import reduce_ensemble


@dataclass(frozen=True)
class TumorTask(Task):
    """Tumor segmentation. Target: the tumor mask in [-1, 1]. Condition channels: uptake (the inverted PET
    intensity in [-1, 1], high = dark in the PNG) and the vertical position in the whole image in [-1, 1]
    (rows normalised by the competition's maximum height: brain at the top, bladder at the bottom); with
    `data.position_channel: false` the position channel is zeros (same channel count, so a model with it can be
    started from one without it and back)."""

    name: str = "tumor"
    released: str = "tumor_seg.safetensors"
    target_channels: int = 1
    cond_channels: int = 2
    num_classes: int = 0          # no class labels
    metric: str = "dice"
    higher_is_better: bool = True
    decision_settings: tuple[str, ...] = ("threshold", "min_component", "uptake_fraction")
    tumor_weight: float = 1.0     # loss weight of a tumor pixel relative to background (~1% of pixels are tumor)
    position_channel: bool = True  # the vertical-position condition channel (False: zeros)
    layout = TumorLayout()
    codec = TumorCodec()
    report = TumorReport()

    def with_options(self, data_config: dict) -> TumorTask:
        return replace(self, tumor_weight=float(data_config.get("tumor_weight", self.tumor_weight)),
                       position_channel=bool(data_config.get("position_channel", self.position_channel)))

    # --- model side ----------------------------------------------------------------------------------------
    def condition(self, image: torch.Tensor, row0: torch.Tensor) -> torch.Tensor:
        """(N, H, W) uint8 PET and (N,) first rows -> (N, 2, H, W)."""
        n, h, w = image.shape
        uptake = 1.0 - image.float() / 127.5
        rows = row0.view(n, 1).float() + torch.arange(h, dtype=torch.float32, device=row0.device).view(1, h)
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
        return Prediction(image=tumor_mask(probability, sample, inputs["image"]), uncertainty=spread.numpy(), probability=probability)

    def training_batch(self, batch: dict[str, torch.Tensor]):
        target = (batch["label"].float() * 2 - 1).unsqueeze(1)
        cond = self.condition(batch["image"], batch["row0"])
        weight = 1.0 + (self.tumor_weight - 1.0) * batch["label"].float().unsqueeze(1)
        return target, cond, None, weight

    # --- data ----------------------------------------------------------------------------------------------
    def training_dataset(self, root: Path, cases: list[Case], config: dict, progress: bool):
        dc = config["data"]
        data = load_tumor_cases(root, include_controls=any(c.extra for c in cases), need_truth=True,
                                progress=progress, ids=[c.id for c in cases])
        return TumorTrainDataset(data, crop_size=dc["crop_size"], tumor_crop_prob=dc["tumor_crop_prob"],
                                 flip=dc["flip"], seed=config["seed"], control_fraction=dc["control_fraction"],
                                 intensity_aug=dc["intensity_aug"], synthetic_fraction=dc["synthetic_fraction"],
                                 synthetic_max=dc["synthetic_max"], zoom=dc["zoom"], rotate=dc["rotate"],
                                 crop_width=dc["crop_width"])

    # --- answer and score ------------------------------------------------------------------------------------
    def output_image(self, prediction: Prediction) -> np.ndarray:
        return prediction.image

    def score(self, image: np.ndarray, truth: np.ndarray) -> dict:
        tp, fp, fn = tp_fp_fn(image, truth)
        return {"dice": dice_score(image, truth), "tp": tp, "fp": fp, "fn": fn}


TASK = TumorTask()
