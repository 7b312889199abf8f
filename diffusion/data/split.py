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


def split_cases(cases: list, val_patients: int, seed: int, which: str, calib_patients: int = 0) -> list:
    """The one split rule: cases (with `.patient` and `.extra`) on the `which` side ('train' | 'val' | 'calib' |
    'all'). Patients are split by `split_patients`; `calib_patients` of the training patients are carved out as a
    calibration split (never trained on, never reported: thresholds and post-processing are chosen there). Extra
    cases (healthy controls) are never validated or calibrated on: they always train."""
    if which == "all":
        return list(cases)
    if which not in ("train", "val", "calib"):
        raise ValueError(f"unknown split {which!r}: train, val, calib or all")
    patients = [c for c in cases if not c.extra]
    train, val = split_patients([c.patient for c in patients], val_patients, seed)
    calib = set(sorted(train)[i] for i in np.random.default_rng(seed + 1).permutation(len(train))[:calib_patients])
    keep = {"train": train - calib, "val": val, "calib": calib}[which]
    chosen = [c for c in patients if c.patient in keep]
    return chosen + ([c for c in cases if c.extra] if which == "train" else [])
