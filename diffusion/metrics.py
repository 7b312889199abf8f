"""Metrics: per-image MAE (the competition's CT score), Dice, timing summaries and standard errors over patients."""
from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional import mean_absolute_error


def image_mae(prediction: np.ndarray, truth: np.ndarray) -> float:
    """MAE over the whole image in grey levels; the prediction is rounded to uint8 as it would be submitted."""
    pred = torch.from_numpy(np.clip(np.rint(prediction), 0, 255).astype(np.float32))
    return float(mean_absolute_error(pred, torch.from_numpy(truth.astype(np.float32))))


def timing_summary(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"mean": 0.0, "median": 0.0, "p95": 0.0, "max": 0.0}
    arr = np.asarray(seconds)
    return {"mean": float(arr.mean()), "median": float(np.median(arr)), "p95": float(np.percentile(arr, 95)),
            "max": float(arr.max())}


def tp_fp_fn(prediction: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """Counts over binary masks (anything > 0 is positive)."""
    p, t = prediction > 0, truth > 0
    return int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())


def dice_score(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice = 2TP / (2TP + FP + FN), the competition's per-image score; 1.0 when both masks are empty."""
    tp, fp, fn = tp_fp_fn(prediction, truth)
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def patient_mean_se(values, patients) -> tuple[float, float]:
    """The mean over cases and its standard error with the patient as the unit: cases of one patient are not
    independent (neighbouring CT slices), so the error is the cluster-robust one over patients,
    sqrt(P / (P - 1) * sum_p (S_p - n_p * mean)^2) / N with S_p the sum of patient p's n_p values; with one case per
    patient it is the usual std / sqrt(N). NaN when fewer than two patients."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    mean = float(values.mean())
    groups: dict = {}
    for value, patient in zip(values, patients):
        groups.setdefault(patient, []).append(value - mean)
    p = len(groups)
    if p < 2:
        return mean, float("nan")
    residual = np.array([np.sum(g) for g in groups.values()])
    return mean, float(np.sqrt(p / (p - 1) * np.square(residual).sum()) / values.size)


def interval_bounds(members: np.ndarray, level: float, resolution: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The central per-pixel `level` interval of an ensemble (E, H, W): its (1 - level) / 2 and (1 + level) / 2
    quantiles over the members (linear interpolation between order statistics). `resolution`: the answer's grid (CT:
    1 grey level, the submitted image is uint8): the bounds are rounded to it, so the interval holds the answers one
    could submit, and a pixel all members agree on covers the truth when the rounded answer is right."""
    if not 0 < level < 1:
        raise ValueError(f"interval level {level}: must be in (0, 1)")
    lower, upper = np.quantile(members, [(1 - level) / 2, (1 + level) / 2], axis=0)
    if resolution:
        lower, upper = np.rint(lower / resolution) * resolution, np.rint(upper / resolution) * resolution
    return lower, upper


INTERVAL_SCORES = ("shift", "scaled")


def interval_scale(lower: np.ndarray, upper: np.ndarray, resolution: float | None, score: str) -> np.ndarray:
    """Each pixel's unit of a conformal margin: 1 for the "shift" score (the same margin everywhere), the interval's
    own width plus one step of the answer's grid for "scaled" (a margin in proportion to the members' spread,
    never zero): the calibrated interval is [lower - m * scale, upper + m * scale]."""
    if score not in INTERVAL_SCORES:
        raise ValueError(f"interval score {score!r}: one of {', '.join(INTERVAL_SCORES)}")
    return upper - lower + (resolution or 1.0) if score == "scaled" else np.ones_like(lower)


def conformity_scores(lower: np.ndarray, upper: np.ndarray, truth: np.ndarray, where: np.ndarray,
                      scale: np.ndarray | None = None) -> np.ndarray:
    """How far outside [lower, upper] each truth `where` lies (negative: inside, by that much), in units of `scale`
    (`interval_scale`; default 1). The interval widened by m * scale on both sides holds exactly the truths whose
    score is <= m."""
    t = truth[where].astype(np.float64)
    distance = np.maximum(lower[where] - t, t - upper[where])
    return distance if scale is None else distance / scale[where]


def conformal_margin(scores: np.ndarray, level: float) -> float:
    """The split-conformal margin of conformalized quantile regression (Romano et al. 2019): the
    ceil((n + 1) level)-th smallest of n calibration scores (`conformity_scores`). Widening every interval by it on
    both sides covers a new truth exchangeable with the calibration ones with probability >= `level`. Never
    negative: it widens an interval that covers too little and leaves one that covers enough as it is."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    rank = int(np.ceil((scores.size + 1) * level))
    if not 0 < level < 1 or rank > scores.size:
        raise ValueError(f"{scores.size} calibration pixels are too few for a conformal {level} interval")
    return max(0.0, float(np.partition(scores, rank - 1)[rank - 1]))


def interval_stats(lower: np.ndarray, upper: np.ndarray, truth: np.ndarray, where: np.ndarray) -> dict[str, float]:
    """Over the pixels `where` (e.g. the missing pixels inside the body): how many there are, how many of them the
    interval [lower, upper] holds the truth of, and the summed width; add over cases, then divide."""
    t, lo, hi = truth[where].astype(np.float64), lower[where], upper[where]
    return {"pixels": int(where.sum()), "covered": int(((t >= lo) & (t <= hi)).sum()), "width": float((hi - lo).sum())}
