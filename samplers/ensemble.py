"""Ensembles: E samples per input with per-sample seeds, reduced per pixel (median for MAE) with the spread kept."""
from __future__ import annotations

import torch


def sample_noise(shape: tuple[int, ...], seeds: list[int]) -> torch.Tensor:
    """One generator per sample, so a sample does not depend on the batch it was drawn in."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


def reduce_ensemble(samples: torch.Tensor, how: str = "median") -> tuple[torch.Tensor, torch.Tensor]:
    """samples (E, ...) -> (reduced, spread). median: per-pixel median (MAE-optimal); mean: per-pixel mean.
    spread: per-pixel standard deviation (0 for E = 1)."""
    if how == "median":
        reduced = samples.quantile(0.5, dim=0) if samples.shape[0] > 1 else samples[0]
    elif how == "mean":
        reduced = samples.mean(0)
    else:
        raise ValueError(f"unknown ensemble reduction {how!r}")
    spread = samples.std(0, unbiased=False) if samples.shape[0] > 1 else torch.zeros_like(samples[0])
    return reduced, spread
