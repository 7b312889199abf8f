"""The CT training dataset: crops of the training slices with a new missing mask per item."""
from __future__ import annotations

import numpy as np
import torch

from diffusion.data.masks import random_mask
from diffusion.errors import DataError
from diffusion.tasks.ct.layout import SIZE, CTSlices


class CTTrainDataset(torch.utils.data.Dataset):
    """Training items: a crop of a slice's truth, tissue and a missing mask that is either freshly generated
    (blobs and strokes, 11-75% of the slice) or the real mask of a random slice; random horizontal flips.
    The known pixels are derived from the truth and the mask by the task, so every mask is a new example.
    Items are a deterministic function of (seed, epoch, index)."""

    def __init__(self, slices: CTSlices, crop_size: int = 128, generated_mask_prob: float = 0.5, flip: bool = True,
                 seed: int = 0):
        if slices.ct is None:
            raise DataError("training needs the ground truth (ct/ folder)")
        self.slices, self.crop_size, self.generated_mask_prob = slices, min(crop_size, SIZE), generated_mask_prob
        self.flip, self.seed, self.epoch = flip, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """`key`: an index (drawn in the epoch of `set_epoch`) or an (epoch, index) pair."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        rng = np.random.default_rng([self.seed, epoch, index])
        s = self.slices
        if rng.random() < self.generated_mask_prob:
            missing = random_mask(rng, SIZE)
        else:
            missing = s.missing_mask[int(rng.integers(len(s)))]
        ct, tissue = s.ct[index], s.tissue[index]
        c = self.crop_size
        for _ in range(6):  # prefer crops with missing body pixels: the only ones the loss sees
            y, x = (int(v) for v in rng.integers(0, SIZE - c + 1, 2))
            window = (slice(y, y + c), slice(x, x + c))
            if ((missing[window] > 0) & (tissue[window] > 0)).mean() > 0.02:
                break
        ct, tissue, missing = ct[window], tissue[window], missing[window]
        if self.flip and rng.random() < 0.5:
            ct, tissue, missing = ct[:, ::-1], tissue[:, ::-1], missing[:, ::-1]
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))
        return {"ct": as_tensor(ct), "tissue": as_tensor(tissue), "missing_mask": as_tensor(missing),
                "vertebra": torch.tensor(int(s.vertebra[index]))}
