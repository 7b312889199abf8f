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


def plot_folds(per_fold: dict[str, list[list[float]]], out_path: Path, against: dict | None = None) -> None:
    """Cross-validation at a glance: each patient's out-of-fold Dice by fold (dots) with the fold's mean and standard
    error, one colour per candidate; with `against` ({"name", "theirs", "ours"}), a second panel pairs another
    model's Dice with the out-of-fold Dice of the same patients (above the diagonal: the folds do better)."""
    fig, axes = plt.subplots(1, 2 if against else 1, figsize=(10 if against else 6, 3.8), squeeze=False,
                             layout="constrained")
    ax = axes[0, 0]
    width = 0.8 / max(1, len(per_fold))
    rng = np.random.default_rng(0)
    for c, (name, folds) in enumerate(per_fold.items()):
        for k, values in enumerate(folds):
            x = k + (c - (len(per_fold) - 1) / 2) * width
            ax.scatter(x + rng.uniform(-width / 4, width / 4, len(values)), values, s=6, alpha=0.4, color=f"C{c}")
            se = np.std(values, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
            ax.errorbar(x, np.mean(values), yerr=se, fmt="o", color=f"C{c}", capsize=3,
                        label=name if k == 0 else None)
    ax.set_xticks(range(len(next(iter(per_fold.values())))))
    ax.set(xlabel="fold", ylabel="out-of-fold Dice per patient", ylim=(-0.02, 1.02),
           title="out-of-fold Dice by fold (mean ± SE)")
    # below the panels, saved with the figure's tight box: a candidate's name (joined runs' paths) is often wider than
    # the axes, and a legend inside them covered the dots and ran off the canvas
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower left", fontsize=7, frameon=False)
    if against:
        ax = axes[0, 1]
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
        ax.scatter(against["theirs"], against["ours"], s=12)
        ax.set(xlabel=f"{against['name']}: Dice", ylabel="out of fold: Dice", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
               title="the same patients, neither trained on them")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100, bbox_inches="tight")
    plt.close(fig)
