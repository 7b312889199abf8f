"""Choose the tumor probability threshold on the validation patients and store it with the checkpoint.

    python -m eval.calibrate --checkpoint runs/tumor_cpu/best.safetensors --split val \
        --out checkpoints/tumor_seg.safetensors

Samples every validation image once with the checkpoint's sampler and ensemble, sweeps the threshold over the
ensemble's mean probability, and writes a copy of the checkpoint whose `sample.threshold` maximises the mean
per-image Dice (the competition's score). The sweep is saved next to it as `<out>.threshold.json`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from diffusion.checkpoint import load_slim, save_slim
from diffusion.data import resolve_task_root, split_indices
from diffusion.data.tumor import list_tumor_cases, read_tumor_case
from diffusion.errors import run_cli
from diffusion.inference import TumorSegmenter, case_seed
from diffusion.metrics import dice_score

THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)


def sweep(probabilities: list[np.ndarray], labels: list[np.ndarray], thresholds=THRESHOLDS) -> dict[float, float]:
    """Mean per-image Dice at each threshold."""
    return {float(t): float(np.mean([dice_score(p > t, lab) for p, lab in zip(probabilities, labels)]))
            for t in thresholds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--split", default="val", choices=["all", "train", "val"])
    p.add_argument("--ensemble", type=int, default=None, help="default: the checkpoint's")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", required=True, help="where to write the calibrated slim checkpoint")
    args = p.parse_args(argv)
    segmenter = TumorSegmenter.from_checkpoint(args.checkpoint)
    root, where = resolve_task_root("tumor", args.data_root)
    cases = list_tumor_cases(root, include_controls=False)
    dc = segmenter.config["data"]
    keep = split_indices([c[0] for c in cases], dc["val_patients"], dc["split_seed"], args.split)
    cases = [cases[i] for i in keep][: args.limit] if args.limit else [cases[i] for i in keep]
    probabilities, labels = [], []
    for cid, image_path, label_path, _ in tqdm(cases, desc="sampling validation images"):
        image, label = read_tumor_case(image_path, label_path)
        probabilities.append(segmenter.predict(image, ensemble=args.ensemble, seed=case_seed(cid)).probability)
        labels.append(label)
    scores = sweep(probabilities, labels)
    best = max(scores, key=scores.get)
    state, config, extra = load_slim(args.checkpoint, expected_task="tumor")
    config["sample"]["threshold"] = best
    if args.ensemble:
        config["sample"]["ensemble"] = args.ensemble
    save_slim(Path(args.out), state, config, {**extra, "threshold_dice": scores[best], "threshold_images": len(cases)})
    report = {"threshold": best, "dice": scores[best], "images": len(cases), "sweep": scores}
    Path(str(args.out) + ".threshold.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "sweep"}))
    return 0


if __name__ == "__main__":
    run_cli(main)
