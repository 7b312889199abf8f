"""What a CT run reports besides the MAE: the overview figure's row and the uncertainty report (does the ensemble's
spread point at the errors?) over the missing pixels inside the body, the only ones predicted."""
from __future__ import annotations

import numpy as np

from diffusion.tasks.base import Example, Prediction, Report

SPREAD_BINS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, np.inf)  # grey levels of ensemble spread (reliability)
TOP_SHARE = 0.1   # "most uncertain": this share of a slice's missing body pixels, by spread


def predicted_region(inputs: dict) -> np.ndarray:
    """The missing pixels inside the body: the only ones predicted (the rest are known or 0)."""
    return (inputs["missing_mask"] > 0) & (inputs["tissue"] > 0)


class CTReport(Report):
    overview_columns = ("corrupted", "prediction", "truth", "|error|", "uncertainty")
    overview_cmaps = ("gray", "gray", "gray", "magma", "viridis")
    has_intervals = True
    interval_resolution = 1.0

    def overview_row(self, example: Example, prediction: Prediction, image: np.ndarray, record: dict) -> list:
        truth = example.truth
        error = np.abs(image.astype(np.float32) - truth) if truth is not None else None
        return [example.inputs["corrupted"], image, truth, error, prediction.uncertainty]

    def uncertainty_stats(self, example: Example, prediction: Prediction, image: np.ndarray) -> dict:
        """Over the predicted pixels: (sum of |error|, pixels) for the 10 % with the largest ensemble spread and for
        the rest, and per spread bin (the reliability curve)."""
        where = predicted_region(example.inputs)
        error = np.abs(image.astype(np.float64) - example.truth)[where]
        spread = prediction.uncertainty[where].astype(np.float64)
        order = np.argsort(-spread, kind="stable")
        top = np.zeros(len(order), bool)
        top[order[: int(np.ceil(TOP_SHARE * len(order)))]] = True
        stats = {"top": (float(error[top].sum()), int(top.sum())), "rest": (float(error[~top].sum()), int((~top).sum()))}
        bins = np.digitize(spread, SPREAD_BINS[1:-1])
        for k in range(len(SPREAD_BINS) - 1):
            stats[f"bin_{k}"] = (float(error[bins == k].sum()), int((bins == k).sum()))
        return stats

    def uncertainty_summary(self, totals: dict[str, list[float]]) -> dict:
        """MAE of the most uncertain 10 % of the predicted pixels against the rest, and the reliability curve (MAE
        and share of pixels per spread bin): informative uncertainty has mae_top > mae_rest and a rising curve."""
        mae = {k: (num / den if den else None) for k, (num, den) in totals.items()}
        pixels = totals["top"][1] + totals["rest"][1]
        reliability = [{"spread_from": SPREAD_BINS[k], "spread_to": SPREAD_BINS[k + 1], "mae": mae[f"bin_{k}"],
                        "share": totals[f"bin_{k}"][1] / max(1, pixels)} for k in range(len(SPREAD_BINS) - 1)]
        ratio = mae["top"] / mae["rest"] if mae["top"] is not None and mae["rest"] else None
        return {"mae_top10": mae["top"], "mae_rest": mae["rest"], "ratio": ratio, "pixels": pixels,
                "reliability": reliability}

    def interval_region(self, example: Example) -> np.ndarray:
        return predicted_region(example.inputs)
