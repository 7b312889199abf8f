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
