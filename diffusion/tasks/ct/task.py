"""CT inpainting (DATA.md section 1): repair the blanked pixels of a 256x256 CT slice, given the mask, the tissue map
and the vertebra level. Scored by the mean absolute error over the whole image (lower is better).

The model side of the task: the condition, the loss weight, the training batch, the predictor's two hooks (`encode`,
`decode`) and the score. Its data on disk is `layout.py`, its HTTP format `codec.py`, its reports `report.py`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffusion.metrics import image_mae
from diffusion.tasks.base import Case, Encoded, Prediction, Task
from diffusion.tasks.ct.codec import CTCodec
from diffusion.tasks.ct.dataset import CTTrainDataset
from diffusion.tasks.ct.layout import NUM_VERTEBRA_LEVELS, CTLayout, load_ct_slices
from diffusion.tasks.ct.report import CTReport
from samplers.ensemble import reduce_ensemble


def grey_to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 grey levels 0..255 -> [-1, 1]."""
    return x.float() / 127.5 - 1.0


def unit_to_grey(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> float grey levels in [0, 255]."""
    return ((x.clamp(-1, 1) + 1.0) * 127.5).clamp(0, 255)


@dataclass(frozen=True)
class CTTask(Task):
    """CT inpainting. Target: the CT slice in [-1, 1]. Condition channels:
    known pixels (CT where known, 0 where missing), missing mask, body, torso fat."""

    name: str = "ct"
    released: str = "ct_inpaint.safetensors"
    target_channels: int = 1
    cond_channels: int = 4
    num_classes: int = NUM_VERTEBRA_LEVELS   # vertebra levels; index num_classes is the null class
    metric: str = "mae"
    higher_is_better: bool = False
    layout = CTLayout()
    codec = CTCodec()
    report = CTReport()

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
    def training_dataset(self, root: Path, cases: list[Case], config: dict, progress: bool):
        dc = config["data"]
        slices = load_ct_slices(root, ids=[c.id for c in cases], need_truth=True, progress=progress)
        return CTTrainDataset(slices, crop_size=dc["crop_size"], generated_mask_prob=dc["generated_mask_prob"],
                              flip=dc["flip"], seed=config["seed"])

    # --- score ---------------------------------------------------------------------------------------------
    def score(self, image: np.ndarray, truth: np.ndarray) -> dict:
        return {"mae": image_mae(image, truth)}


TASK = CTTask()
