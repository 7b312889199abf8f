"""The tumor training dataset: crops (tumor-centred or not) of patients and healthy controls, with the levers of
issue #27 (synthetic tumors pasted into controls, zoom and rotation, uptake jitter, whole-width crops)."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from diffusion.errors import DataError
from diffusion.tasks.tumor.layout import TumorCases
from diffusion.tasks.tumor.synthetic_tumors import paste_tumors, tumor_patches


def intensity_augment(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Uptake jitter of a uint8 MIP (255 = no uptake, 0 = the most): the uptake u = (255 - image) / 255 becomes
    clip(s * u ** g) with a contrast s ~ U(1 - strength, 1 + strength) and a gamma g = exp(U(-strength, strength)).
    Scanners and reconstructions differ in how bright a tumor looks; where nothing is taken up stays blank."""
    s = rng.uniform(1 - strength, 1 + strength)
    g = float(np.exp(rng.uniform(-strength, strength)))
    uptake = np.clip(s * ((255.0 - image) / 255.0) ** g, 0.0, 1.0)
    return np.round(255.0 - 255.0 * uptake).astype(np.uint8)


class TumorTrainDataset(torch.utils.data.Dataset):
    """Crops of `crop_size` (square; `crop_width` sets another width, e.g. 400: whole-width crops as at inference);
    with probability `tumor_crop_prob` (patients only) the crop is centred near a random tumor pixel (the class is ~1%
    of pixels). Images are padded with background (255) when smaller than the crop.
    `control_fraction` (None: every image equally often, so the 426 controls outnumber the 120 training patients)
    is the share of items drawn from the healthy controls; the rest come from the patients, each group uniformly.
    `synthetic_fraction` > 0: that share of the items is a healthy control with tumors cut from the training
    patients pasted in (`synthetic_tumors.py`), the pasted components its label.
    `intensity_aug` > 0 jitters each crop's uptake (`intensity_augment`); `zoom` > 0 scales the crop by a
    log-uniform factor in [1 / (1 + zoom), 1 + zoom] and `rotate` > 0 turns it by up to that many degrees (image and
    label by one affine map). Items: image and label crops and the crop's first row in the whole image (for the
    vertical position channel); deterministic in (seed, epoch, index). With the levers off, every draw is what it
    was before they existed (each lever draws from a generator of its own)."""

    def __init__(self, cases: TumorCases, crop_size: int = 256, tumor_crop_prob: float = 0.5, flip: bool = True,
                 seed: int = 0, control_fraction: float | None = None, intensity_aug: float = 0.0,
                 synthetic_fraction: float = 0.0, synthetic_max: int = 3, zoom: float = 0.0, rotate: float = 0.0,
                 crop_width: int | None = None):
        if cases.labels is None:
            raise DataError("training needs the labels (patients/labels)")
        if control_fraction is not None and not 0.0 <= control_fraction <= 1.0:
            raise ValueError(f"data.control_fraction {control_fraction}: must be between 0 and 1 (or null)")
        self.cases, self.crop_size, self.tumor_crop_prob = cases, crop_size, tumor_crop_prob
        self.crop_width = crop_width or crop_size
        self.flip, self.seed, self.epoch = flip, seed, 0
        self.control_fraction = control_fraction
        if not 0.0 <= intensity_aug < 1.0:
            raise ValueError(f"data.intensity_aug {intensity_aug}: must be in [0, 1)")
        self.intensity_aug, self.zoom, self.rotate = intensity_aug, zoom, rotate
        control = list(cases.is_control) or [False] * len(cases)
        self.groups = ([i for i in range(len(cases)) if not control[i]], [i for i in range(len(cases)) if control[i]])
        self.tumor_pixels = [np.argwhere(lab > 0) for lab in cases.labels]
        self.synthetic_fraction, self.synthetic_max = synthetic_fraction, synthetic_max
        patients = self.groups[0]
        self.patches = tumor_patches([cases.ids[i] for i in patients], [cases.images[i] for i in patients],
                                     [cases.labels[i] for i in patients]) if synthetic_fraction else []
        if synthetic_fraction and not (self.patches and self.groups[1]):
            raise DataError("data.synthetic_fraction needs training patients with tumors and healthy controls "
                            "(data.controls: true)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.cases)

    def synthetic(self, epoch: int, index: int) -> tuple[int, np.ndarray, np.ndarray] | None:
        """(control index, image with pasted tumors, label) for a synthetic item, or None for an ordinary one."""
        if not self.synthetic_fraction:
            return None
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        if rng.random() >= self.synthetic_fraction:
            return None
        controls = self.groups[1]
        control = controls[int(rng.integers(len(controls)))]
        image, label, _ = paste_tumors(self.cases.images[control], self.patches, rng, max_tumors=self.synthetic_max)
        return control, image, label

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """`key`: an index (drawn in the epoch of `set_epoch`) or an (epoch, index) pair."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        rng = np.random.default_rng([self.seed, epoch, index])
        pasted = self.synthetic(epoch, index)
        if pasted is not None:
            index, image, label = pasted
            tumor = np.argwhere(label > 0)
        else:
            if self.control_fraction is not None and all(self.groups):
                group = self.groups[int(rng.random() < self.control_fraction)]
                index = group[int(rng.integers(len(group)))]
            image, label, tumor = self.cases.images[index], self.cases.labels[index], self.tumor_pixels[index]
        ch, cw = self.crop_size, self.crop_width
        h, w = image.shape
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        if ph or pw:
            image = np.pad(image, ((0, ph), (0, pw)), constant_values=255)
            label = np.pad(label, ((0, ph), (0, pw)), constant_values=0)
        H, W = image.shape
        if len(tumor) and rng.random() < self.tumor_crop_prob:
            cy, cx = tumor[int(rng.integers(len(tumor)))]
            y = int(np.clip(cy - rng.integers(ch // 8, ch - ch // 8), 0, H - ch))
            x = int(np.clip(cx - rng.integers(cw // 8, cw - cw // 8), 0, W - cw))
        else:
            y = int(rng.integers(0, H - ch + 1))
            x = int(rng.integers(0, W - cw + 1))
        if self.zoom or self.rotate:
            image, label = self.warped(image, label, y, x, np.random.default_rng([self.seed, epoch, index, 2]))
        else:
            image, label = image[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]
        if self.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.intensity_aug:  # drawn last: with it off, every other draw is what it always was
            image = intensity_augment(image, rng, self.intensity_aug)
        return {"image": torch.from_numpy(np.ascontiguousarray(image)),
                "label": torch.from_numpy(np.ascontiguousarray(label)), "row0": torch.tensor(y)}

    def warped(self, image: np.ndarray, label: np.ndarray, y: int, x: int, rng: np.random.Generator):
        """The crop at (y, x) scaled and turned about its centre by one affine map for image and label (the label
        by nearest neighbour, so it stays {0, 1}); outside the image is background."""
        ch, cw = self.crop_size, self.crop_width
        scale = float(np.exp(rng.uniform(-np.log1p(self.zoom), np.log1p(self.zoom)))) if self.zoom else 1.0
        angle = float(rng.uniform(-self.rotate, self.rotate)) if self.rotate else 0.0
        centre = (x + (cw - 1) / 2, y + (ch - 1) / 2)
        matrix = cv2.getRotationMatrix2D(centre, angle, scale)
        matrix[:, 2] -= (x, y)  # into the crop's coordinates
        size = (cw, ch)
        image = cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderValue=255)
        label = cv2.warpAffine(label, matrix, size, flags=cv2.INTER_NEAREST, borderValue=0)
        return image, label
