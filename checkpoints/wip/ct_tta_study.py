"""Issue #28: inference-time levers for the CT release, no training, judged on the calibration patients.

    python checkpoints/wip/ct_tta_study.py --split calib --limit 40 --data-root ../shared/data

For each slice, the three released CT models' members under shift test-time augmentation (the whole input rolled
by (dy, dx) pixels, the answer rolled back: a network with strided down-sampling sees another grid phase; the body
comes within 6 pixels of the border in 9 of 531 sampled slices, so a few pixels wrap): the regressor's flip pair at
8 shifts, the diffusion model's default (8 DDIM-1 members with flips) at 4, the student's one pass at 8. Then the
MAE of: the release (flip pair, no shift), the regressor over 2 / 4 / 8 shifts (median and mean of the members), the
diffusion model and student with more shifts, and weighted blends of the regressor with the diffusion model or the
student; each with its paired difference from the release and the standard error over patients. Writes
`<out>/study.json`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from diffusion.evaluate import select_cases
from diffusion.inference import Predictor, case_seed
from diffusion.metrics import image_mae

SHIFTS = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (6, 6), (2, 6), (6, 2)]
MODELS = {"reg": ("checkpoints/ct_inpaint.safetensors", 8), "dif": ("checkpoints/ct_inpaint_diffusion.safetensors", 4),
          "stu": ("checkpoints/ct_inpaint_distilled.safetensors", 8)}  # name: (checkpoint, shifts)


def shifted_members(pred: Predictor, inputs: dict, seed: int, shifts: list[tuple[int, int]]) -> np.ndarray:
    """(shifts, members, H, W) grey levels: the model's default members for the input rolled by each shift."""
    task = pred.task
    spec, ensemble = pred.default_spec()
    encoded = task.encode(inputs, pred.multiple)
    known = encoded.known or {}
    out = []
    for dy, dx in shifts:
        def roll(t, dy=dy, dx=dx):
            return None if t is None else t.roll((dy, dx), dims=(-2, -1))
        x0 = pred.sample(roll(encoded.cond), encoded.labels, spec, ensemble, [seed], known_x0=roll(known.get("x0")),
                         known_mask=roll(known.get("mask")))
        out.append(task.decode(x0.roll((-dy, -dx), dims=(-2, -1)), inputs, pred.config["sample"]).members)
    return np.stack(out).astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default="calib", choices=["calib", "val"])
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="runs/ct_tta_study")
    args = p.parse_args()
    preds = {k: Predictor.from_checkpoint(path, task="ct") for k, (path, _) in MODELS.items()}
    task = preds["reg"].task
    root, line = task.layout.resolve_root(args.data_root)
    cases, line = select_cases(task, root, preds["reg"].config["data"], args.split, args.limit)
    print(line)
    members = {k: [] for k in MODELS}
    truths, patients = [], []
    for case in tqdm(cases, desc="slices"):
        example = task.layout.read_case(root, case, True)
        for k, pred in preds.items():
            members[k].append(shifted_members(pred, example.inputs, case_seed(case.id, 0), SHIFTS[:MODELS[k][1]]))
        truths.append(example.truth)
        patients.append(case.patient)

    def score(images) -> np.ndarray:
        return np.array([image_mae(np.clip(np.rint(im), 0, 255).astype(np.uint8), t) for im, t in zip(images, truths)])

    def pool(k: str, shifts: int) -> list[np.ndarray]:  # each slice's members over the first `shifts` shifts
        return [m[:shifts].reshape(-1, *m.shape[-2:]) for m in members[k]]

    def median(k, s):
        return [np.median(m, 0) for m in pool(k, s)]

    rows = {"release (regressor flip pair)": score(median("reg", 1))}
    for s in (2, 4, 8):
        rows[f"regressor, {s} shifts, median"] = score(median("reg", s))
        rows[f"regressor, {s} shifts, mean"] = score([m.mean(0) for m in pool("reg", s)])
    rows["diffusion default"] = score(median("dif", 1))
    rows["diffusion, 4 shifts"] = score(median("dif", 4))
    for s in (1, 8):
        rows[f"student, {s} shift(s)"] = score(median("stu", s))
    reg, dif, stu = median("reg", 1), median("dif", 1), median("stu", 8)
    for w in (0.9, 0.8, 0.7, 0.5):
        rows[f"{w} regressor + {1 - w:.1f} diffusion"] = score([w * a + (1 - w) * b for a, b in zip(reg, dif)])
        rows[f"{w} regressor + {1 - w:.1f} student (8 shifts)"] = score([w * a + (1 - w) * b for a, b in zip(reg, stu)])
    patients = np.array(patients)
    base = rows["release (regressor flip pair)"]
    report = {"split": args.split, "slices": len(cases), "patients": len(set(patients)), "rows": {}}
    for name, values in rows.items():
        diff = values - base
        per_patient = np.array([diff[patients == q].mean() for q in sorted(set(patients))])
        se = float(per_patient.std(ddof=1) / np.sqrt(len(per_patient)))
        report["rows"][name] = {"mae": float(values.mean()), "vs_release": float(diff.mean()), "vs_release_se": se}
        print(f"{name:45s} MAE {values.mean():.3f}   vs release {diff.mean():+.4f} ± {se:.4f}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "study.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
