"""Choose the tumor threshold, the minimum component size and (given several) the checkpoint on calibration
patients, and store them with the checkpoint. Never on the patients whose score is reported.

    python -m eval.calibrate --checkpoint runs/tumor/best.safetensors --split calib --out runs/tumor/calibrated.safetensors
        # --split calib: the checkpoint's calibration patients (data.calib_patients, never trained on); --split has
        # no default here: the patients a setting is chosen on are always named
    python -m eval.calibrate --checkpoint runs/tumor/best.safetensors runs/tumor/last.safetensors --split calib \
        --cross-fit 5 --out runs/tumor/calibrated.safetensors
        # several checkpoints of one run: the checkpoint is one more setting chosen on the calibration patients
    python -m eval.calibrate --checkpoint runs/tumor_segmenter/last.safetensors --split val --cross-fit 5 --out X
        # a model trained without calibration patients: an honest estimate by cross-fitting

Samples every image of the split once per checkpoint (its sampler and ensemble, the same seeds), sweeps checkpoint x
threshold x minimum component size over the ensemble's mean probability, and writes a copy of the best checkpoint
with the `sample.threshold` and `sample.min_component` that maximise the mean per-image Dice there (each mask cut at
the checkpoint's own `sample.uptake_fraction`; `eval.crossval` compares fractions as candidates). With
`--cross-fit K` the patients are dealt into K folds and each fold is scored with the setting (checkpoint included)
chosen on the other K-1: that mean, with its standard error over patients, is a score no patient's own truth
selected. The report is `<out>.threshold.json`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from diffusion.checkpoint import load_slim, save_slim
from diffusion.data.split import has_calibration
from diffusion.errors import UserError, run_cli
from diffusion.evaluate import add_split_argument
from diffusion.inference import case_seed, load_predictor
from diffusion.tasks import get_task
from diffusion.tasks.tumor.postprocess import kept_by_uptake
from eval.compare import common_cases

THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)
MIN_SIZES = (0, 10, 25, 50, 100, 200)


def dice_table(probabilities: list[np.ndarray], labels: list[np.ndarray], thresholds=THRESHOLDS,
               min_sizes=MIN_SIZES, images: list[np.ndarray] | None = None, uptake_fraction: float = 0.0) -> np.ndarray:
    """Per-image Dice for every (threshold, minimum component size): shape (images, thresholds, sizes), each cell the
    Dice of `postprocess.tumor_mask` at that setting. With `uptake_fraction` > 0 each mask is also cut to that share
    of its components' peak uptake (`images`: the inputs' PET).

    One connected-component pass per threshold serves every size: the size filter drops whole components and the
    uptake cut works within each component, so a setting's true and predicted pixel counts are sums over the
    components it keeps."""
    if uptake_fraction > 0 and (images is None or len(images) != len(probabilities)):
        raise ValueError("dice_table: an uptake_fraction needs the input image of every probability map")
    table = np.zeros((len(probabilities), len(thresholds), len(min_sizes)))
    for i, (probability, label) in enumerate(zip(probabilities, labels)):
        truth = (np.asarray(label) > 0).ravel()
        true_pixels = int(truth.sum())
        uptake = None if uptake_fraction <= 0 else (255 - images[i].astype(np.int16)).ravel()
        for j, t in enumerate(thresholds):
            n, components, stats, _ = cv2.connectedComponentsWithStats((probability > t).astype(np.uint8),
                                                                       connectivity=8)
            components = components.ravel()
            # the pixels each component contributes (after the cut, when there is one)
            kept = components > 0 if uptake is None else kept_by_uptake(components, n, uptake, uptake_fraction)
            predicted = np.bincount(components[kept], minlength=n)
            hits = np.bincount(components[kept & truth], minlength=n)
            area = stats[:, cv2.CC_STAT_AREA]
            for k, m in enumerate(min_sizes):
                keep = area >= m
                keep[0] = False
                tp = int(hits[keep].sum())
                fp, fn = int(predicted[keep].sum()) - tp, true_pixels - tp
                table[i, j, k] = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return table


def sweep(probabilities: list[np.ndarray], labels: list[np.ndarray], thresholds=THRESHOLDS) -> dict[float, float]:
    """Mean per-image Dice at each threshold (no component filter)."""
    table = dice_table(probabilities, labels, thresholds, (0,))[:, :, 0]
    return {float(t): float(v) for t, v in zip(thresholds, table.mean(0))}


def best_setting(table: np.ndarray, thresholds=THRESHOLDS, min_sizes=MIN_SIZES) -> tuple[float, int, float]:
    """(threshold, minimum size, mean Dice) of the best cell of a (images, thresholds, sizes) table; ties go to the
    first threshold and the smallest size."""
    (j, k), dice = best_cell(table)
    return float(thresholds[j]), int(min_sizes[k]), dice


def best_cell(table: np.ndarray) -> tuple[tuple[int, ...], float]:
    """Index over the setting axes (all but the first, images) of the best mean, and that mean; ties go to the
    first index in C order."""
    mean = table.mean(0)
    index = np.unravel_index(int(np.argmax(mean)), mean.shape)
    return tuple(int(i) for i in index), float(mean[index])


def describe(index: tuple[int, ...], thresholds=THRESHOLDS, min_sizes=MIN_SIZES) -> dict:
    """A cell of a (images, [checkpoints,] thresholds, sizes) table as a setting."""
    *c, j, k = index
    return {**({"checkpoint": c[0]} if c else {}), "threshold": float(thresholds[j]), "min_component": int(min_sizes[k])}


def cross_fit(table: np.ndarray, folds: int, seed: int = 0, thresholds=THRESHOLDS, min_sizes=MIN_SIZES,
              fold: np.ndarray | None = None) -> dict:
    """Each image scored with the setting chosen on the folds it is not in. `table`: (images, thresholds, sizes)
    or (images, checkpoints, thresholds, sizes), in which case the checkpoint is chosen inside each fold too.
    `fold`: each image's fold (default: the images dealt into `folds` folds at random, by `seed`)."""
    n = table.shape[0]
    if not 2 <= folds <= n:
        raise UserError(f"--cross-fit {folds}: needs 2..{n} folds for {n} images")
    fold = np.random.default_rng(seed).permutation(n) % folds if fold is None else np.asarray(fold)
    scores, settings = np.zeros(n), []
    for f in range(folds):
        index, _ = best_cell(table[fold != f])
        scores[fold == f] = table[(fold == f, *index)]
        settings.append(describe(index, thresholds, min_sizes))
    return {"folds": folds, "dice": float(scores.mean()), "se": float(scores.std(ddof=1) / np.sqrt(n)),
            "settings": settings, "scores": scores}


def compare_candidates(table: np.ndarray, folds: int, names: list[str], fold: np.ndarray | None = None) -> dict:
    """Each candidate of a (images, candidates, thresholds, sizes) table cross-fitted on its own (its threshold and
    size chosen on the other folds), and its paired difference from the first candidate with the standard error over
    images: a lever measured on/off with no image's own truth choosing anything."""
    own = [cross_fit(table[:, c], folds, fold=fold) for c in range(table.shape[1])]
    rows = {}
    for name, fitted in zip(names, own):
        diff = fitted["scores"] - own[0]["scores"]
        rows[name] = {"dice": fitted["dice"], "se": fitted["se"], "vs_first": float(diff.mean()),
                      "vs_first_se": float(diff.std(ddof=1) / np.sqrt(len(diff))), "settings": fitted["settings"],
                      "scores": [float(x) for x in fitted["scores"]]}
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, nargs="+", help="one, or several of one run to choose from")
    p.add_argument("--data-root", default=None)
    add_split_argument(p, default=None)  # no default: choosing on the wrong patients is the one mistake here
    p.add_argument("--cross-fit", type=int, default=0, metavar="K", help="also the K-fold cross-fitted Dice")
    p.add_argument("--ensemble", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", required=True, help="where to write the calibrated slim checkpoint")
    args = p.parse_args(argv)
    task = get_task("tumor")
    segmenters = [load_predictor(task.name, path) for path in args.checkpoint]
    for path, segmenter in zip(args.checkpoint, segmenters):
        if args.split == "calib" and not has_calibration(segmenter.config["data"]):
            raise UserError(f"{path}: trained without calibration patients (data.calib_patients 0): train with "
                            f"--set data.calib_patients=N, or estimate honestly with --split val --cross-fit K")
    root, _ = task.layout.resolve_root(args.data_root)
    cases = common_cases(task, root, segmenters, args.checkpoint, args.split, args.limit, False)
    examples = [task.layout.read_case(root, case, with_truth=True) for case in cases]
    tables = []
    for path, segmenter in zip(args.checkpoint, segmenters):
        probabilities = [segmenter.predict_one(example.inputs, ensemble=args.ensemble,
                                               seed=case_seed(case.id)).probability
                         for case, example in tqdm(list(zip(cases, examples)), desc=f"sampling {args.split}: {path}")]
        tables.append(dice_table(probabilities, [example.truth for example in examples],
                                 images=[example.inputs["image"] for example in examples],
                                 uptake_fraction=float(segmenter.config["sample"]["uptake_fraction"])))
    table = np.stack(tables, 1)  # (images, checkpoints, thresholds, sizes)
    index, dice = best_cell(table)
    chosen = describe(index)
    source = args.checkpoint[chosen["checkpoint"]]
    state, config, meta = load_slim(source, expected_task="tumor")
    config["sample"]["threshold"], config["sample"]["min_component"] = chosen["threshold"], chosen["min_component"]
    if args.ensemble:
        config["sample"]["ensemble"] = args.ensemble
    save_slim(Path(args.out), state, config, {**meta, "threshold_dice": dice, "threshold_images": len(cases),
                                              "threshold_split": args.split, "calibrated_from": str(source)})
    untuned = (list(THRESHOLDS).index(0.5), 0)
    report = {"checkpoint": str(source), "threshold": chosen["threshold"], "min_component": chosen["min_component"],
              "dice": dice, "split": args.split, "images": len(cases), "ids": [c.id for c in cases],
              "untuned_dice": float(table[(slice(None), index[0], *untuned)].mean()),
              "per_checkpoint": {}}
    for c, path in enumerate(args.checkpoint):
        own, own_dice = best_cell(table[:, c])
        report["per_checkpoint"][path] = {**describe(own), "dice": own_dice,
                                          "untuned_dice": float(table[(slice(None), c, *untuned)].mean())}
    if args.cross_fit:
        fitted = cross_fit(table if len(args.checkpoint) > 1 else table[:, 0], args.cross_fit)
        report["cross_fit"] = {k: v for k, v in fitted.items() if k != "scores"}
        if len(args.checkpoint) > 1:
            report["cross_fit"]["per_checkpoint"] = compare_candidates(table, args.cross_fit, args.checkpoint)
    report["sweep"] = {f"{t}/{m}": float(table[:, index[0], j, k].mean()) for j, t in enumerate(THRESHOLDS)
                       for k, m in enumerate(MIN_SIZES)}
    Path(str(args.out) + ".threshold.json").write_text(json.dumps(report, indent=1))
    shown = {k: v for k, v in report.items() if k not in ("sweep", "ids")}
    if "per_checkpoint" in report.get("cross_fit", {}):  # the per-image scores stay in the report file
        shown["cross_fit"] = {**report["cross_fit"], "per_checkpoint": {
            path: {k: v for k, v in row.items() if k != "scores"}
            for path, row in report["cross_fit"]["per_checkpoint"].items()}}
    print(json.dumps(shown, indent=1))
    return 0


if __name__ == "__main__":
    run_cli(main)
