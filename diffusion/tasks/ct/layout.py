"""The competition's CT inpainting layout, spelled here only: file names, reading and validation.

Per slice id `PPP_S`: ct/ct_PPP_S.png (truth, optional at inference), corrupted/corrupted_PPP_S.png,
mask/mask_PPP_S.png ({0,255}, 255 = missing), tissue/tissue_PPP_S.png ({0,100,255}),
vertebrae/vertebrae_PPP_S.txt (one integer). A served request carries the same four inputs (`codec.py` checks them
with the rules here).
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from diffusion.data.images import read_png, values_problem
from diffusion.errors import DataError
from diffusion.tasks.base import Case, Example, Layout

SIZE = 256
NUM_VERTEBRA_LEVELS = 25   # 0..24 seen in the data; the null class is index 25
_ID = re.compile(r"^corrupted_(\d+_\d+)\.png$")


MASK_VALUES, TISSUE_VALUES = (0, 255), (0, 100, 255)


def slice_files(root: Path, sid: str) -> dict[str, Path]:
    """The files of slice `sid` under a task folder: the inputs (corrupted, mask, tissue, vertebrae) and the truth (ct)."""
    root = Path(root)
    return {"corrupted": root / "corrupted" / f"corrupted_{sid}.png", "mask": root / "mask" / f"mask_{sid}.png",
            "tissue": root / "tissue" / f"tissue_{sid}.png", "vertebrae": root / "vertebrae" / f"vertebrae_{sid}.txt",
            "ct": root / "ct" / f"ct_{sid}.png"}


def list_ct_ids(root: Path) -> list[str]:
    """Slice ids found in root/corrupted, sorted by (patient, slice)."""
    folder = slice_files(root, "")["corrupted"].parent
    if not folder.is_dir():
        raise DataError(f"{folder}: folder is missing (expected the competition's CT layout)")
    ids = [m.group(1) for p in folder.iterdir() if (m := _ID.match(p.name))]
    if not ids:
        raise DataError(f"{folder}: no corrupted_PPP_S.png files")
    return sorted(ids, key=lambda s: tuple(int(x) for x in s.split("_")))


def slice_problem(image: np.ndarray, allowed: tuple[int, ...] | None = None) -> str | None:
    """What is wrong with one of a slice's images (size, and the values a mask or tissue map may take), or None."""
    if image.shape != (SIZE, SIZE):
        return f"expected {SIZE}x{SIZE} pixels, got {image.shape[1]}x{image.shape[0]}"
    return values_problem(image, allowed) if allowed is not None else None


def vertebra_problem(value: int) -> str | None:
    if not 0 <= value < NUM_VERTEBRA_LEVELS:
        return f"{value} out of range 0..{NUM_VERTEBRA_LEVELS - 1}"
    return None


def read_checked(path: Path, allowed: tuple[int, ...] | None = None) -> np.ndarray:
    image = read_png(path)
    if problem := slice_problem(image, allowed):
        raise DataError(f"{path}: {problem}")
    return image


def parse_vertebra(text: str, where: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise DataError(f"{where}: vertebra must be an integer, got {str(text).strip()[:20]!r}") from None
    if problem := vertebra_problem(value):
        raise DataError(f"{where}: vertebra {problem}")
    return value


def read_slice(root: Path, sid: str, with_truth: bool) -> dict:
    files = slice_files(root, sid)
    item = {"corrupted": read_checked(files["corrupted"]), "mask": read_checked(files["mask"], MASK_VALUES),
            "tissue": read_checked(files["tissue"], TISSUE_VALUES)}
    if not files["vertebrae"].is_file():
        raise DataError(f"{files['vertebrae']}: file is missing")
    item["vertebra"] = parse_vertebra(files["vertebrae"].read_text(), str(files["vertebrae"]))
    if with_truth:
        item["ct"] = read_checked(files["ct"])
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
    truth_folder = slice_files(root, "")["ct"].parent
    with_truth = truth_folder.is_dir()
    if need_truth and not with_truth:
        raise DataError(f"{truth_folder}: folder is missing (training needs the ground truth)")
    with ThreadPoolExecutor(4) as pool:
        items = list(tqdm(pool.map(lambda s: read_slice(root, s, with_truth), ids), total=len(ids),
                          desc="reading CT slices", disable=not progress, leave=False))
    stack = lambda key: np.stack([it[key] for it in items]) if items else np.zeros((0, SIZE, SIZE), np.uint8)
    return CTSlices(ids=list(ids), corrupted=stack("corrupted"), missing_mask=(stack("mask") > 0).astype(np.uint8),
                    tissue=stack("tissue"), vertebra=np.array([it["vertebra"] for it in items], np.int64),
                    ct=stack("ct") if with_truth else None)


class CTLayout(Layout):
    """The CT cases of a task folder: one per slice, the patient from its id; predictions as the competition's
    reconstructed/reconstructed_PPP_S.png."""

    folder = "ct-inpainting"
    marker = "corrupted"

    def list_cases(self, root: Path, include_extra: bool = False) -> list[Case]:
        return [Case(sid, sid.split("_")[0]) for sid in list_ct_ids(root)]

    def has_truth(self, root: Path, cases: list[Case]) -> bool:
        return slice_files(root, "")["ct"].parent.is_dir()

    def read_case(self, root: Path, case: Case, with_truth: bool) -> Example:
        item = read_slice(root, case.id, with_truth)
        inputs = {"corrupted": item["corrupted"], "missing_mask": (item["mask"] > 0).astype(np.uint8),
                  "tissue": item["tissue"], "vertebra": item["vertebra"]}
        return Example(case, inputs, item.get("ct"))

    def prediction_path(self, out: Path, case: Case) -> Path:
        return Path(out) / "reconstructed" / f"reconstructed_{case.id}.png"
