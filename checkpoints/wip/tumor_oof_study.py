"""Issue #27: inference-time levers judged out of fold with the five fold segmenters, no training.

    python checkpoints/wip/tumor_oof_study.py --checkpoint runs/tumor_fold{0,1,2,3,4}/last.safetensors \
        --data-root ../shared/data --out runs/tumor_oof_study

Every patient is predicted by the fold model that did not train on it (its default flip pair), at scale 1 and at
the `--scales` (the whole image zoomed about its centre like the training's zoom augmentation, the probability
mapped back; pixels a zoom pushed out of the frame count only in the other scales). Then, each scored by cross-fitting
over the five folds (a fold's patients scored with the setting chosen on the other four, as `eval.crossval` does):
  - hysteresis: components of probability > low kept only when their peak exceeds high (high = 0: off), with the
    minimum component size;
  - scale test-time augmentation: the mean probability over scale 1 and the other scales, threshold and size chosen.
  - with `--shifts`: shift test-time augmentation (the image rolled by a few pixels, the probability rolled back);
  - with `--blend`: the fold model's probability blended with another family's fold model (e.g. the diffusion
    segmenter of the same fold), the weight chosen with threshold and size.
Prints each arm's cross-validated Dice and its paired difference from today's setting (threshold x size), with
standard errors over patients; writes `<out>/study.json`.
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from diffusion.evaluate import select_cases
from diffusion.inference import case_seed, load_predictor
from diffusion.metrics import dice_score
from diffusion.tasks import get_task
from eval.crossval import fold_models

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
PEAKS = (0.0, 0.9, 0.95, 0.97, 0.98, 0.99)
MIN_SIZES = (0, 10, 25, 50)
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def kept(probability: np.ndarray, low: float, peak: float, min_size: int) -> np.ndarray:
    """Components of probability > low with a peak above `peak` and at least `min_size` pixels."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats((probability > low).astype(np.uint8), connectivity=8)
    top = np.zeros(n)
    np.maximum.at(top, labels.ravel(), probability.ravel())
    keep = (top > peak) & (stats[:, cv2.CC_STAT_AREA] >= min_size)
    keep[0] = False
    return keep[labels]


def fitted(table: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Per-patient Dice, each fold's patients at the setting (all axes but the first) best on the other folds."""
    scores = np.zeros(len(table))
    for f in np.unique(fold):
        mean = np.nanmean(table[fold != f], 0)
        index = np.unravel_index(int(np.nanargmax(mean)), mean.shape)
        scores[fold == f] = table[(fold == f, *index)]
    return scores


def zoomed_probability(model, image: np.ndarray, scale: float, seed: int) -> np.ndarray:
    h, w = image.shape
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 0, scale)
    warped = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=255)
    probability = model.predict_one({"image": warped}, seed=seed).probability.astype(np.float32)
    inverse = cv2.invertAffineTransform(matrix)
    back = cv2.warpAffine(probability, inverse, (w, h), flags=cv2.INTER_LINEAR, borderValue=np.nan)
    inside = cv2.warpAffine(np.ones((h, w), np.float32), inverse, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    back[inside == 0] = np.nan
    return back


def shifted_probability(model, image: np.ndarray, dy: int, dx: int, seed: int) -> np.ndarray:
    """The probability of the image rolled by (dy, dx) pixels, rolled back (the borders are background)."""
    rolled = np.roll(image, (dy, dx), axis=(0, 1))
    return np.roll(model.predict_one({"image": rolled}, seed=seed).probability.astype(np.float32), (-dy, -dx), axis=(0, 1))


def threshold_table(probabilities: list[np.ndarray], truths: list[np.ndarray]) -> np.ndarray:
    """Per-image Dice at every threshold x minimum size: (images, thresholds, sizes)."""
    table = np.zeros((len(truths), len(THRESHOLDS), len(MIN_SIZES)))
    for i, (probability, truth) in enumerate(zip(probabilities, truths)):
        for a, low in enumerate(THRESHOLDS):
            for c, size in enumerate(MIN_SIZES):
                table[i, a, c] = dice_score(kept(probability, low, 0.0, size), truth)
    return table


def pair_arms(task, root, checkpoint: str, ids, probabilities, truths, fold) -> dict[str, np.ndarray]:
    """Another split's model on its validation patients that were scored out of fold: it, the fold model and their
    mean, each cross-fitted over those patients (by their folds). Per-patient Dice over all patients, NaN elsewhere."""
    other = load_predictor("tumor", checkpoint)
    cases, _ = select_cases(task, root, other.config["data"], "val", None, whose=checkpoint)
    where = {i: n for n, i in enumerate(ids)}
    rows = [(where[c.id], c) for c in cases if c.id in where]
    if len({fold[n] for n, _ in rows}) < 2:
        raise SystemExit(f"--pair {checkpoint}: its validation patients scored out of fold lie in fewer than 2 folds")
    theirs = [other.predict_one(task.layout.read_case(root, c, with_truth=False).inputs, seed=case_seed(c.id)).probability
              for _, c in tqdm(rows, desc="pair")]
    ours = [probabilities[n][0] for n, _ in rows]
    truth = [truths[n] for n, _ in rows]
    folds = np.array([fold[n] for n, _ in rows])
    arms = {}
    for name, probs in ((f"pair: {Path(checkpoint).name} alone", theirs), ("pair: fold model alone", ours),
                        ("pair: mean of the two", [(a + b) / 2 for a, b in zip(theirs, ours)])):
        scores = np.full(len(truths), np.nan)
        scores[[n for n, _ in rows]] = fitted(threshold_table(probs, truth), folds)
        arms[name] = scores
    return arms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", nargs="+", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--scales", default="0.85,1.18", help="zoom factors beside 1 (empty: none)")
    p.add_argument("--shifts", default="", help="DY:DX pixel shifts beside 0:0 (shift test-time augmentation), e.g. 8:8")
    p.add_argument("--no-hysteresis", action="store_true", help="skip the hysteresis arm (its table is slow)")
    p.add_argument("--limit", type=int, default=None, help="only the first N patients of each fold (a dry run)")
    p.add_argument("--pair", default=None, metavar="CHECKPOINT",
                   help="a model of another split (e.g. the release): on its validation patients, it, the fold model "
                        "and the mean of the two (an ensemble of two independently trained models), cross-fitted")
    p.add_argument("--blend", nargs="+", default=None, metavar="CHECKPOINT",
                   help="the fold models of another family or run, e.g. the diffusion segmenters (a fold ensemble or "
                        "its K fold checkpoints, with @KEY=VALUE sample settings as eval.crossval takes them): the mean "
                        "w x theirs + (1 - w) x the fold model's, w chosen with threshold and size by cross-fitting")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    warnings.filterwarnings("ignore", "Mean of empty slice")  # hysteresis cells with peak <= low are left empty
    task = get_task("tumor")
    root, _ = task.layout.resolve_root(args.data_root)
    scales = [float(s) for s in args.scales.split(",") if s]
    shifts = [tuple(int(v) for v in item.split(":")) for item in args.shifts.split(",") if item]
    probabilities, truths, fold, ids = [], [], [], []
    partners = fold_models(args.blend)[0] if args.blend else None
    blend = []
    for k, (_, model, _) in enumerate(fold_models(args.checkpoint)[0]):
        cases, _ = select_cases(task, root, model.config["data"], "val", args.limit, whose=str(model.checkpoint))
        for case in tqdm(cases, desc=f"fold {k}"):
            example = task.layout.read_case(root, case, with_truth=True)
            seed = case_seed(case.id)
            first = model.predict_one(example.inputs, seed=seed).probability.astype(np.float32)
            probabilities.append([first] + [zoomed_probability(model, example.inputs["image"], s, seed)
                                            for s in scales]
                                 + [shifted_probability(model, example.inputs["image"], dy, dx, seed)
                                    for dy, dx in shifts])
            if partners:
                blend.append(partners[k][1].predict_one(example.inputs, seed=seed).probability.astype(np.float32))
            truths.append(example.truth.astype(bool))
            fold.append(k)
            ids.append(case.id)
    fold = np.array(fold)
    if args.no_hysteresis:
        today = fitted(threshold_table([q[0] for q in probabilities], truths), fold)
        arms = {"today (threshold x size)": today}
    else:
        arms, today = hysteresis_arms(probabilities, truths, fold)
    tta = {f"scales 1+{s}": [0, j + 1] for j, s in enumerate(scales)}
    if len(scales) > 1:
        tta["scales 1+" + "+".join(map(str, scales))] = list(range(len(scales) + 1))
    tta |= {f"shift {dy}:{dx}": [0, len(scales) + 1 + j] for j, (dy, dx) in enumerate(shifts)}
    if len(shifts) > 1:
        tta["shifts " + " ".join(f"{dy}:{dx}" for dy, dx in shifts)] = [0, *range(len(scales) + 1, len(scales) + 1 + len(shifts))]
    for name, members in tta.items():
        means = [np.nan_to_num(np.nanmean(np.stack([probability[m] for m in members]), 0))
                 for probability in probabilities]
        arms[name] = fitted(threshold_table(means, truths), fold)
    if blend:  # (patients, weight, threshold, size): w x the partner + (1 - w) x the fold model
        table = np.stack([threshold_table([w * b + (1 - w) * q[0] for q, b in zip(probabilities, blend)], truths)
                          for w in BLEND_WEIGHTS], 1)
        arms["blend partner alone"] = fitted(table[:, -1], fold)
        arms["blend (weight x threshold x size)"] = fitted(table, fold)
        arms["blend 0.5 (threshold x size)"] = fitted(table[:, list(BLEND_WEIGHTS).index(0.5)], fold)
    if args.pair:
        arms |= pair_arms(task, root, args.pair, ids, probabilities, truths, fold)
    report_and_print(arms, fold, today, Path(args.out))


def hysteresis_arms(probabilities, truths, fold) -> tuple[dict, np.ndarray]:
    """Today's threshold x size and hysteresis (components kept when their peak clears a second threshold)."""
    hysteresis = np.full((len(truths), len(THRESHOLDS), len(PEAKS), len(MIN_SIZES)), np.nan)
    for i, (probability, truth) in enumerate(tqdm(list(zip(probabilities, truths)), desc="hysteresis")):
        for a, low in enumerate(THRESHOLDS):
            for b, peak in enumerate(PEAKS):
                if peak == 0 or peak > low:
                    for c, size in enumerate(MIN_SIZES):
                        hysteresis[i, a, b, c] = dice_score(kept(probability[0], low, peak, size), truth)
    today = fitted(hysteresis[:, :, :1], fold)
    return {"today (threshold x size)": today, "hysteresis (low x peak x size)": fitted(hysteresis, fold)}, today


def report_and_print(arms: dict, fold: np.ndarray, today: np.ndarray, out: Path) -> None:
    report = {}
    for name, scores in arms.items():  # each against today's setting, a pair row against the fold model alone
        reference = arms["pair: fold model alone"] if name.startswith("pair") else today
        scored = ~np.isnan(scores)
        mean, se = mean_se(scores[scored])
        report[name] = {"patients": int(scored.sum()), "dice": mean, "se": se,
                        "reference": "the fold model alone" if name.startswith("pair") else "today",
                        "difference": mean_se((scores - reference)[scored]),
                        "per_fold": [float(np.mean(scores[scored & (fold == k)])) for k in np.unique(fold[scored])]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(report, indent=1))
    for name, row in report.items():
        (d, e) = row["difference"]
        print(f"{name} ({row['patients']} patients): {row['dice']:.3f} ± {row['se']:.3f}, vs {row['reference']} "
              f"{d:+.4f} ± {e:.4f}, per fold {' / '.join(f'{v:.3f}' for v in row['per_fold'])}")


def mean_se(values: np.ndarray) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(len(values)))


if __name__ == "__main__":
    main()
