"""Patient-level train/validation split, deterministic by seed."""
from __future__ import annotations

import numpy as np


def split_patients(patients: list[str], val_patients: int, seed: int) -> tuple[set[str], set[str]]:
    """(train patients, validation patients). Every slice of a patient lands on the same side."""
    unique = sorted(set(patients))
    n_val = min(val_patients, max(len(unique) - 1, 0))
    order = np.random.default_rng(seed).permutation(len(unique))
    val = {unique[i] for i in order[:n_val]}
    return set(unique) - val, val


def split_indices(patients: list[str], val_patients: int, seed: int, which: str) -> list[int]:
    """Indices of the items of `patients` in the `which` ('train' | 'val' | 'all') side of the split."""
    if which == "all":
        return list(range(len(patients)))
    train, val = split_patients(patients, val_patients, seed)
    keep = {"train": train, "val": val}[which]
    return [i for i, p in enumerate(patients) if p in keep]


def validation_subset(patients: list[str], n: int) -> list[int]:
    """Up to n distinct indices spread over as many patients as possible (round-robin over the patients: every
    patient's first pick, then every patient's second, ...), in a fixed order. A patient's slices are taken in the
    order 3, 1, 2, 4, 5, ... (modulo its slice count, each once), so the first two picks are those of the
    subsets reported so far."""
    by_patient: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        by_patient.setdefault(p, []).append(i)
    orders = {}
    for p, idx in by_patient.items():
        picks = dict.fromkeys([3 % len(idx)] + list(range(1, len(idx))) + [0])  # ordered, without repeats
        orders[p] = [idx[k] for k in picks]
    chosen: list[int] = []
    for rank in range(max((len(o) for o in orders.values()), default=0)):
        for p in sorted(orders):
            if rank < len(orders[p]) and len(chosen) < n:
                chosen.append(orders[p][rank])
    return sorted(chosen)


def fold_patients(patients: list[str], folds: int, fold: int, seed: int) -> tuple[set[str], set[str]]:
    """(train patients, validation patients) of fold `fold` of a `folds`-fold cross-validation: the patients in a
    seeded random order dealt round-robin into the folds, so every patient is validated in exactly one fold and the
    folds differ in size by at most one."""
    unique = sorted(set(patients))
    if not 0 <= fold < folds:
        raise ValueError(f"data.fold {fold}: must be in 0..{folds - 1} (data.folds {folds})")
    order = np.random.default_rng(seed).permutation(len(unique))
    val = {unique[i] for i in order[fold::folds]}
    return set(unique) - val, val


def split_cases(cases: list, val_patients: int, seed: int, which: str, calib_patients: int = 0, folds: int = 0,
                fold: int = 0, inner_folds: int = 0, inner_fold: int = 0) -> list:
    """The one split rule: cases (with `.patient` and `.extra`) on the `which` side ('train' | 'val' | 'calib' |
    'all'). Patients are split by `split_patients` (or, with `folds` > 0, into fold `fold` of a cross-validation:
    `fold_patients`, and `val_patients` is not used); `calib_patients` of the training patients are carved out as a
    calibration split (never trained on, never reported: thresholds and post-processing are chosen there). With
    `inner_folds` > 0 (nested cross-validation) the calibration side is instead inner fold `inner_fold` of the
    training patients dealt into `inner_folds` folds (`fold_patients` again, seed + 1): the inner folds' models
    together never see the outer fold's validation patients. Extra cases (healthy controls) are never validated or
    calibrated on: they always train."""
    if which == "all":
        return list(cases)
    if which not in ("train", "val", "calib"):
        raise ValueError(f"unknown split {which!r}: train, val, calib or all")
    patients = [c for c in cases if not c.extra]
    if folds:
        train, val = fold_patients([c.patient for c in patients], folds, fold, seed)
    else:
        train, val = split_patients([c.patient for c in patients], val_patients, seed)
    if inner_folds:
        _, calib = fold_patients(sorted(train), inner_folds, inner_fold, seed + 1)
    else:
        calib = set(sorted(train)[i] for i in np.random.default_rng(seed + 1).permutation(len(train))[:calib_patients])
    keep = {"train": train - calib, "val": val, "calib": calib}[which]
    chosen = [c for c in patients if c.patient in keep]
    return chosen + ([c for c in cases if c.extra] if which == "train" else [])


def split_by_config(cases: list, data_config: dict, which: str) -> list:
    """`split_cases` with the split a config's `data` section (a checkpoint's, or a run's) describes."""
    return split_cases(cases, data_config["val_patients"], data_config["split_seed"], which,
                       data_config["calib_patients"], data_config["folds"], data_config["fold"],
                       data_config.get("inner_folds", 0), data_config.get("inner_fold", 0))


def has_calibration(data_config: dict) -> bool:
    """Whether a split has calibration patients: `calib_patients` carved from the training patients, or the held-out
    inner fold of a nested cross-validation."""
    return bool(data_config["calib_patients"] or data_config.get("inner_folds"))
