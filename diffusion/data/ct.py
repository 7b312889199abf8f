"""The competition's CT inpainting layout: reading, validation and the training dataset.

Per slice id `PPP_S`: ct/ct_PPP_S.png (truth, optional at inference), corrupted/corrupted_PPP_S.png,
mask/mask_PPP_S.png ({0,255}, 255 = missing), tissue/tissue_PPP_S.png ({0,100,255}),
vertebrae/vertebrae_PPP_S.txt (one integer).
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffusion.data.images import read_png
from diffusion.data.masks import random_mask
from diffusion.errors import DataError

SIZE = 256
NUM_VERTEBRA_LEVELS = 25   # 0..24 seen in the data; the null class is index 25
_ID = re.compile(r"^corrupted_(\d+_\d+)\.png$")


def list_ct_ids(root: Path) -> list[str]:
    """Slice ids found in root/corrupted, sorted by (patient, slice)."""
    folder = Path(root) / "corrupted"
    if not folder.is_dir():
        raise DataError(f"{folder}: folder is missing (expected the competition's CT layout)")
    ids = [m.group(1) for p in folder.iterdir() if (m := _ID.match(p.name))]
    if not ids:
        raise DataError(f"{folder}: no corrupted_PPP_S.png files")
    return sorted(ids, key=lambda s: tuple(int(x) for x in s.split("_")))


def check_image(image: np.ndarray, path: Path, allowed: tuple[int, ...] | None = None) -> np.ndarray:
    if image.shape != (SIZE, SIZE):
        raise DataError(f"{path}: expected {SIZE}x{SIZE} pixels, got {image.shape[1]}x{image.shape[0]}")
    if allowed is not None:
        bad = np.setdiff1d(np.unique(image), allowed)
        if bad.size:
            raise DataError(f"{path}: values must be only {list(allowed)}, found {bad[:5].tolist()}")
    return image


def parse_vertebra(text: str, where: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise DataError(f"{where}: vertebra must be an integer, got {str(text).strip()[:20]!r}") from None
    if not 0 <= value < NUM_VERTEBRA_LEVELS:
        raise DataError(f"{where}: vertebra {value} out of range 0..{NUM_VERTEBRA_LEVELS - 1}")
    return value


def read_slice(root: Path, sid: str, with_truth: bool) -> dict:
    root = Path(root)
    item = {
        "corrupted": check_image(read_png(root / "corrupted" / f"corrupted_{sid}.png"), root / "corrupted" / f"corrupted_{sid}.png"),
        "mask": check_image(read_png(root / "mask" / f"mask_{sid}.png"), root / "mask" / f"mask_{sid}.png", (0, 255)),
        "tissue": check_image(read_png(root / "tissue" / f"tissue_{sid}.png"), root / "tissue" / f"tissue_{sid}.png",
                              (0, 100, 255)),
    }
    vpath = root / "vertebrae" / f"vertebrae_{sid}.txt"
    if not vpath.is_file():
        raise DataError(f"{vpath}: file is missing")
    item["vertebra"] = parse_vertebra(vpath.read_text(), str(vpath))
    if with_truth:
        item["ct"] = check_image(read_png(root / "ct" / f"ct_{sid}.png"), root / "ct" / f"ct_{sid}.png")
    return item


@dataclass
class CTSlices:
    """Validated slices held as stacked uint8 arrays (N, 256, 256); missing_mask is 0/1."""

    ids: list[str]
    corrupted: np.ndarray
    missing_mask: np.ndarray
    tissue: np.ndarray
    vertebra: np.ndarray
    ct: np.ndarray | None = None

    @property
    def patients(self) -> list[str]:
        return [i.split("_")[0] for i in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices) -> CTSlices:
        idx = np.asarray(list(indices), dtype=np.int64)
        return CTSlices([self.ids[i] for i in idx], self.corrupted[idx], self.missing_mask[idx], self.tissue[idx],
                        self.vertebra[idx], None if self.ct is None else self.ct[idx])


def load_ct_slices(root: Path, ids: list[str] | None = None, need_truth: bool = False,
                   progress: bool = True) -> CTSlices:
    """Read and validate slices. Truth (ct/) is loaded when the folder exists; `need_truth` makes it required."""
    root = Path(root)
    ids = list_ct_ids(root) if ids is None else ids
    with_truth = (root / "ct").is_dir()
    if need_truth and not with_truth:
        raise DataError(f"{root / 'ct'}: folder is missing (training needs the ground truth)")
    with ThreadPoolExecutor(4) as pool:
        items = list(tqdm(pool.map(lambda s: read_slice(root, s, with_truth), ids), total=len(ids),
                          desc="reading CT slices", disable=not progress, leave=False))
    stack = lambda key: np.stack([it[key] for it in items]) if items else np.zeros((0, SIZE, SIZE), np.uint8)
    return CTSlices(ids=list(ids), corrupted=stack("corrupted"), missing_mask=(stack("mask") > 0).astype(np.uint8),
                    tissue=stack("tissue"), vertebra=np.array([it["vertebra"] for it in items], np.int64),
                    ct=stack("ct") if with_truth else None)


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
