"""What a tumor run reports besides the Dice: the overview figure's row (true positives white, false positives red,
false negatives blue) and the uncertainty report (error rates where the ensemble agrees and where it does not)."""
from __future__ import annotations

import numpy as np

from diffusion.tasks.base import Example, Prediction, Report

HIGH_UNCERTAINTY = 0.1   # ensemble spread of the tumor probability above which a pixel counts as uncertain


def outcome_colours(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RGB: true positives white, false positives red, false negatives blue."""
    p, t = prediction > 0, truth > 0
    rgb = np.zeros((*p.shape, 3), np.uint8)
    rgb[p & t], rgb[p & ~t], rgb[~p & t] = (255, 255, 255), (230, 40, 40), (40, 90, 255)
    return rgb


class TumorReport(Report):
    overview_columns = ("PET", "truth", "prediction (TP white, FP red, FN blue)", "uncertainty")
    overview_cmaps = ("gray", "gray", "rgb", "viridis")

    def overview_row(self, example: Example, prediction: Prediction, image: np.ndarray, record: dict) -> list:
        truth = example.truth
        return [example.inputs["image"], None if truth is None else truth * 255,
                image if truth is None else outcome_colours(image, truth), prediction.uncertainty]

    def uncertainty_stats(self, example: Example, prediction: Prediction, image: np.ndarray) -> dict:
        """(wrong pixels, pixels) where the ensemble's spread is low and where it is high (> 0.1)."""
        wrong = (image > 0) != (example.truth > 0)
        high = prediction.uncertainty > HIGH_UNCERTAINTY
        return {key: (int(wrong[where].sum()), int(where.sum())) for key, where in (("low", ~high), ("high", high))}

    def uncertainty_summary(self, totals: dict[str, list[float]]) -> dict:
        """Error rates on the low- and high-uncertainty pixels, and the share of high-uncertainty pixels."""
        out = {f"error_rate_{k}": (e / n if n else None) for k, (e, n) in totals.items()}
        out["high_share"] = totals["high"][1] / max(1, totals["high"][1] + totals["low"][1])
        return out
