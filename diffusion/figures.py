"""Figures: training curves, sample grids and the inference overview."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def plot_curves(metrics_path: Path, out_path: Path) -> None:
    """Training loss and the validation score (MAE or Dice) against step, from metrics.jsonl."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    key = next((k for r in rows for k in r if k.startswith("val_")), "val_mae")
    val = [(r["step"], r[key]) for r in rows if key in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if train:
        s, v = zip(*train)
        axes[0].plot(s, v, lw=0.8)
    axes[0].set(xlabel="step", ylabel="training loss", title="loss")
    if train and min(v for _, v in train) > 0:
        axes[0].set_yscale("log")
    if val:
        s, v = zip(*val)
        axes[1].plot(s, v, "o-")
    name = key[4:].upper()
    axes[1].set(xlabel="step", ylabel=name, title=f"validation {name} (EMA)")
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)


def plot_cases(out_path: Path, columns: list[str], rows: list[list[np.ndarray]], row_titles: list[str],
               cmaps: list[str] | None = None) -> None:
    """A grid: one row per case, one column per image kind (e.g. corrupted, prediction, truth, error)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n_rows, n_cols = len(rows), len(columns)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols, 2.2 * n_rows), squeeze=False)
    cmaps = cmaps or ["gray"] * n_cols
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            ax = axes[r, c]
            if image is not None and image.ndim == 3:
                ax.imshow(image)
            elif image is not None:
                vmax = 255 if cmaps[c] == "gray" else max(float(np.max(image)), 1e-6)
                ax.imshow(image, cmap=cmaps[c], vmin=0, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(row_titles[r], fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)


def plot_reliability(reliability: list[dict], out_path: Path, title: str = "") -> None:
    """Mean absolute error per bin of ensemble spread (with each bin's share of pixels): informative uncertainty
    rises from left to right."""
    rows = [r for r in reliability if r["mae"] is not None]
    labels = [f"{r['spread_from']:g}-{r['spread_to']:g}".replace("-inf", "+") for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(range(len(rows)), [r["mae"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        ax.annotate(f"{100 * r['share']:.1f}%", (i, r["mae"]), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), labels, rotation=30, fontsize=8)
    ax.set(xlabel="ensemble spread (grey levels); label: share of pixels", ylabel="MAE of those pixels",
           title=title or "uncertainty against error")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def plot_coverage(curves: dict[str, dict[float, float]], out_path: Path, title: str = "") -> None:
    """Interval reliability: the empirical coverage of central intervals against their nominal level, one line per
    setting; a calibrated sampler lies on the diagonal, an over-confident one below it."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated")
    for name, curve in curves.items():
        levels = sorted(curve)
        ax.plot(levels, [curve[lv] for lv in levels], marker="o", label=name)
    ax.set(xlabel="nominal level of the per-pixel interval", ylabel="share of missing body pixels covered",
           xlim=(0, 1), ylim=(0, 1), title=title or "interval coverage")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
