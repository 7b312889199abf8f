"""Task registry. A task knows its data and how to turn it into (target, condition, label, loss weight);
it knows nothing of networks. Channel counts are derived here and handed to the network factory."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from diffusion.data.ct import NUM_VERTEBRA_LEVELS
from diffusion.data.tumor import MAX_HEIGHT


def grey_to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 grey levels 0..255 -> [-1, 1]."""
    return x.float() / 127.5 - 1.0


def unit_to_grey(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> float grey levels in [0, 255]."""
    return ((x.clamp(-1, 1) + 1.0) * 127.5).clamp(0, 255)


@dataclass(frozen=True)
class CTTask:
    """CT inpainting. Target: the CT slice in [-1, 1]. Condition channels:
    known pixels (CT where known, 0 where missing), missing mask, body, torso fat."""

    name: str = "ct"
    target_channels: int = 1
    cond_channels: int = 4
    num_classes: int = NUM_VERTEBRA_LEVELS   # vertebra levels; index num_classes is the null class
    metric: str = "mae"
    higher_is_better: bool = False

    @property
    def null_class(self) -> int:
        return self.num_classes

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

    def finalize(self, x0: torch.Tensor, known_grey: torch.Tensor, missing_mask: torch.Tensor,
                 tissue: torch.Tensor) -> torch.Tensor:
        """Samples in [-1, 1] (N, 1, H, W) -> float grey (N, H, W): known pixels kept exactly, outside body 0."""
        grey = unit_to_grey(x0[:, 0])
        grey = torch.where(missing_mask > 0, grey, known_grey.float())
        return torch.where(tissue > 0, grey, torch.zeros_like(grey))


@dataclass(frozen=True)
class TumorTask:
    """Tumor segmentation. Target: the tumor mask in [-1, 1]. Condition channels: uptake (the inverted PET
    intensity in [-1, 1], high = dark in the PNG) and the vertical position in the whole image in [-1, 1]
    (rows normalised by the competition's maximum height: brain at the top, bladder at the bottom)."""

    name: str = "tumor"
    target_channels: int = 1
    cond_channels: int = 2
    num_classes: int = 0          # no class labels
    metric: str = "dice"
    higher_is_better: bool = True
    tumor_weight: float = 1.0     # loss weight of a tumor pixel relative to background (~1% of pixels are tumor)

    @property
    def null_class(self) -> None:
        return None

    def condition(self, image: torch.Tensor, row0: torch.Tensor) -> torch.Tensor:
        """(N, H, W) uint8 PET and (N,) first rows -> (N, 2, H, W)."""
        n, h, w = image.shape
        uptake = 1.0 - image.float() / 127.5
        rows = row0.view(n, 1).float() + torch.arange(h, dtype=torch.float32).view(1, h)
        position = (rows / MAX_HEIGHT * 2 - 1).view(n, h, 1).expand(n, h, w)
        return torch.stack([uptake, position], 1)

    def known(self, target: torch.Tensor, cond: torch.Tensor) -> None:
        """No pixel of the mask is known."""
        return

    def training_batch(self, batch: dict[str, torch.Tensor]):
        target = (batch["label"].float() * 2 - 1).unsqueeze(1)
        cond = self.condition(batch["image"], batch["row0"])
        weight = 1.0 + (self.tumor_weight - 1.0) * batch["label"].float().unsqueeze(1)
        return target, cond, None, weight


TASKS = {"ct": CTTask(), "tumor": TumorTask()}


def get_task(name: str, data_config: dict | None = None):
    """The task by name; `data_config` (the config's `data` section) sets its training options."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    if name == "tumor" and data_config and "tumor_weight" in data_config:
        return replace(TASKS[name], tumor_weight=float(data_config["tumor_weight"]))
    return TASKS[name]
