"""The competition's tumor segmentation layout, spelled here only: file names, reading and validation.

patients/imgs/patient_PPP.png (PET MIP, identical RGB channels), patients/labels/segmentation_PPP.png
({0,255} in all channels, same shape), controls/imgs/control_CCC.png (healthy: the label is all 0).
Width 400, height up to 991. Intensities are inverted: dark = high uptake. A served request carries one such image
(`codec.py` checks it with `pet_problem`); predictions are written as the competition's segmentation_PPP.png.
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from diffusion.data.images import read_png, values_problem, write_png
from diffusion.errors import DataError
from diffusion.tasks.base import Case, Example, Layout

MAX_HEIGHT, MAX_WIDTH = 991, 400   # the competition's bounds
_PATIENT = re.compile(r"^patient_(\d+)\.png$")
_CONTROL = re.compile(r"^control_(\d+)\.png$")


def case_files(root: Path, case: Case) -> tuple[Path, Path | None]:
    """(image, label or None) of a case: patients/imgs/patient_PPP.png with patients/labels/segmentation_PPP.png,
    controls/imgs/control_CCC.png (no label file: the truth is empty)."""
    root = Path(root)
    if case.extra:
        return root / "controls" / "imgs" / f"{case.id}.png", None
    number = case.id.split("_", 1)[1]
    return root / "patients" / "imgs" / f"{case.id}.png", root / "patients" / "labels" / f"segmentation_{number}.png"


def pet_problem(image: np.ndarray) -> str | None:
    """What is wrong with an RGB image that should be a grey PET MIP (or its label) within the competition's bounds,
    a line without the file or field name; None when nothing is."""
    if image.ndim != 3 or not (np.array_equal(image[..., 0], image[..., 1])
                               and np.array_equal(image[..., 0], image[..., 2])):
        return "the three colour channels must be identical"
    h, w = image.shape[:2]
    if not (1 <= h <= MAX_HEIGHT and 1 <= w <= MAX_WIDTH):
        return (f"{w}x{h} pixels is outside the competition's bounds (width <= {MAX_WIDTH}, "
                f"height <= {MAX_HEIGHT})")
    return None


def check_rgb(image: np.ndarray, path: Path) -> np.ndarray:
    """Identical channels within the bounds -> (H, W) uint8; raises DataError naming the file."""
    if problem := pet_problem(image):
        raise DataError(f"{path}: {problem}")
    return image[..., 0].copy()


def read_tumor_case(image_path: Path, label_path: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    image = check_rgb(read_png(image_path, grey=False), image_path)
    if label_path is None:
        return image, None
    label = check_rgb(read_png(label_path, grey=False), label_path)
    if label.shape != image.shape:
        raise DataError(f"{label_path}: shape {label.shape[1]}x{label.shape[0]} differs from its image "
                        f"{image_path.name} ({image.shape[1]}x{image.shape[0]})")
    if problem := values_problem(label, (0, 255)):
        raise DataError(f"{label_path}: {problem}")
    return image, (label > 0).astype(np.uint8)


def list_tumor_cases(root: Path, include_controls: bool) -> list[Case]:
    """The patients (sorted by number), then the healthy controls when asked for (`Case.extra`)."""
    folder = case_files(root, Case("patient_0", "patient_0"))[0].parent
    if not folder.is_dir():
        raise DataError(f"{folder}: folder is missing (expected the competition's tumor layout)")
    cases = [Case(p.stem, p.stem) for p in sorted(folder.iterdir(), key=lambda q: q.name) if _PATIENT.match(p.name)]
    controls = case_files(root, Case("control_0", "control_0", True))[0].parent
    if include_controls and controls.is_dir():
        cases += [Case(p.stem, p.stem, True) for p in sorted(controls.iterdir(), key=lambda q: q.name)
                  if _CONTROL.match(p.name)]
    if not cases:
        raise DataError(f"{folder}: no patient_PPP.png files")
    return cases


def labels_folder(root: Path) -> Path:
    return case_files(root, Case("patient_0", "patient_0"))[1].parent


def has_labels(root: Path, cases: list[Case]) -> bool:
    """The truth is there when the labels folder is (a label missing from it is an error that names the file);
    controls need none."""
    return all(case.extra for case in cases) or labels_folder(root).is_dir()


@dataclass
class TumorCases:
    """Validated images (variable height, width 400) with 0/1 labels (controls: all zero)."""

    ids: list[str]
    images: list[np.ndarray]
    labels: list[np.ndarray] | None
    is_control: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def patients(self) -> list[str]:
        return self.ids

    def subset(self, indices) -> TumorCases:
        idx = list(indices)
        return TumorCases([self.ids[i] for i in idx], [self.images[i] for i in idx],
                          None if self.labels is None else [self.labels[i] for i in idx],
                          [self.is_control[i] for i in idx])


def load_tumor_cases(root: Path, include_controls: bool = False, need_truth: bool = False,
                     progress: bool = True, ids: list[str] | None = None) -> TumorCases:
    """Read and validate the cases (only those in `ids`, when given)."""
    cases = list_tumor_cases(root, include_controls)
    if ids is not None:
        wanted = set(ids)
        cases = [c for c in cases if c.id in wanted]
    has_truth = has_labels(root, cases)
    if need_truth and not has_truth:
        raise DataError(f"{labels_folder(root)}: folder is missing (training needs the labels)")

    def read(case):
        image_path, label_path = case_files(root, case)
        image, label = read_tumor_case(image_path, label_path if has_truth else None)
        if case.extra and has_truth:
            label = np.zeros_like(image)
        return image, label

    with ThreadPoolExecutor(4) as pool:
        items = list(tqdm(pool.map(read, cases), total=len(cases), desc="reading PET images", disable=not progress,
                          leave=False))
    return TumorCases([c.id for c in cases], [i for i, _ in items], [lab for _, lab in items] if has_truth else None,
                      [c.extra for c in cases])


class TumorLayout(Layout):
    """The tumor cases of a task folder: one per patient (the patient is the case), and the healthy controls as
    extra cases; predictions as the competition's RGB segmentation_PPP.png."""

    folder = "tumor-segmentation"
    marker = "patients"
    extra_name = "control"

    def list_cases(self, root: Path, include_extra: bool = False) -> list[Case]:
        return list_tumor_cases(root, include_extra)

    def has_truth(self, root: Path, cases: list[Case]) -> bool:
        return has_labels(root, cases)

    def read_case(self, root: Path, case: Case, with_truth: bool) -> Example:
        image_path, label_path = case_files(root, case)
        image, label = read_tumor_case(image_path, label_path if with_truth else None)
        if with_truth and label is None:  # a control: nothing to find
            label = np.zeros_like(image)
        return Example(case, {"image": image}, label)

    def prediction_path(self, out: Path, case: Case) -> Path:
        name = f"{case.id}_segmentation.png" if case.extra else f"segmentation_{case.id.split('_', 1)[1]}.png"
        return Path(out) / "predictions" / name

    def write_prediction(self, out: Path, case: Case, image: np.ndarray) -> None:
        write_png(self.prediction_path(out, case), np.repeat(image[..., None], 3, 2))
