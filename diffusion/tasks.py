"""Task registry. A task knows its data and how to turn it into (target, condition, label, loss weight);
it knows nothing of networks. Channel counts are derived here and handed to the network factory."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from diffusion.data.ct import NUM_VERTEBRA_LEVELS


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

    def finalize(self, x0: torch.Tensor, known_grey: torch.Tensor, missing_mask: torch.Tensor,
                 tissue: torch.Tensor) -> torch.Tensor:
        """Samples in [-1, 1] (N, 1, H, W) -> float grey (N, H, W): known pixels kept exactly, outside body 0."""
        grey = unit_to_grey(x0[:, 0])
        grey = torch.where(missing_mask > 0, grey, known_grey.float())
        return torch.where(tissue > 0, grey, torch.zeros_like(grey))


TASKS = {"ct": CTTask()}


def get_task(name: str):
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]
