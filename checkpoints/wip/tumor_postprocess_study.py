"""Issue #27: post-processing families on the release's out-of-fold probabilities, every setting cross-fitted by fold.

    python checkpoints/wip/tumor_member_calib.py predict       # once: each fold's networks on its own patients
    python checkpoints/wip/tumor_postprocess_study.py          # the families below, paired against the release's rule
    python checkpoints/wip/tumor_postprocess_study.py figure   # Dice by uptake fraction from the two eval.crossval runs

The release's probability for each of the 150 patients (the mean of its fold's two networks, flip pair each, as
`tumor_member_calib.py predict` stored it), and four ways to turn it into a mask beside the release's (threshold,
then components under a minimum size dropped), each family's settings chosen on four folds and scored on the fifth:

- hysteresis: components of p > low kept when they hold a pixel over high;
- uptake cut: in each component the pixels of at least a fraction of its peak uptake (255 - PNG grey) kept
  (`sample.uptake_fraction`, what the release of 2026-12-07 took);
- the cut relative to the component's local background (the median uptake of a ring around it);
- grown: components dilated by 3 pixels, the new pixels kept where the uptake reaches the fraction of the peak.

All four families are reported: the one kept was chosen among them on these same patients (their unseen check is the
32 patients outside `shared/`). Also the cost of the cut per image (`postprocess.tumor_mask` with and without).
"""
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from diffusion.metrics import dice_score
from diffusion.tasks import get_task
from diffusion.tasks.tumor.postprocess import remove_small_components, tumor_mask, uptake_cut
from eval.calibrate import cross_fit

PROBS = Path("runs/tumor_member_probs")


def families(p, image):
    """{family: {setting: mask}} for one patient."""
    up = 255 - image.astype(np.float32)
    out = {"release rule (threshold, size)": {}, "hysteresis (low, high)": {}, "uptake cut (threshold, size, fraction)": {},
           "cut over local background (threshold, fraction)": {}, "grown 3 px (threshold, fraction)": {}}
    for t in (0.4, 0.45, 0.5, 0.55, 0.6):
        for m in (0, 10, 25):
            kept = remove_small_components((p > t).astype(np.uint8), m)
            out["release rule (threshold, size)"][(t, m)] = kept
            for f in (0.2, 0.25, 0.3, 0.35, 0.4):
                out["uptake cut (threshold, size, fraction)"][(t, m, f)] = uptake_cut(kept, image, f)
    for low in (0.2, 0.3, 0.4, 0.5):
        n, lab = cv2.connectedComponents((p > low).astype(np.uint8), connectivity=8)
        peak = np.zeros(n)
        np.maximum.at(peak, lab.ravel(), p.ravel())
        for high in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
            keep = peak >= high
            keep[0] = False
            out["hysteresis (low, high)"][(low, high)] = keep[lab]
    ring = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11))
    grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    for t in (0.4, 0.5, 0.6):
        kept = remove_small_components((p > t).astype(np.uint8), 10)
        n, lab = cv2.connectedComponents(kept, connectivity=8)
        peak = np.zeros(n)
        np.maximum.at(peak, lab.ravel(), up.ravel())
        background = np.zeros(n)
        for c in range(1, n):
            around = (cv2.dilate((lab == c).astype(np.uint8), ring) > 0) & (lab == 0)
            background[c] = np.median(up[around]) if around.any() else 0
        dilated = cv2.dilate(lab.astype(np.float32), grow).astype(int)
        dilated = np.where(lab > 0, lab, dilated)
        for f in (0.0, 0.2, 0.3, 0.4, 0.5):
            out["cut over local background (threshold, fraction)"][(t, f)] = (lab > 0) & (
                up >= background[lab] + f * (peak[lab] - background[lab]))
            out["grown 3 px (threshold, fraction)"][(t, f)] = (dilated > 0) & (up >= max(f, 0.3) * peak[dilated])
    return out


def main():
    task = get_task("tumor")
    root, _ = task.layout.resolve_root(None)
    index = json.loads((PROBS / "index.json").read_text())
    ids = list(index)
    fold = np.array([index[i] for i in ids])
    cases = {c.id: c for c in task.layout.list_cases(root)}
    tables, images, probabilities = {}, [], []
    for n, case_id in enumerate(tqdm(ids, desc="patients")):
        stored = np.load(PROBS / f"{case_id}.npz")
        p = (stored["gpu"].astype(np.float32) + stored["cpu"].astype(np.float32)) / 2
        image = task.layout.read_case(root, cases[case_id], with_truth=False).inputs["image"]
        images.append(image)
        probabilities.append(p)
        for family, masks in families(p, image).items():
            rows = tables.setdefault(family, np.zeros((len(ids), len(masks))))
            rows[n] = [dice_score(mask, stored["truth"]) for mask in masks.values()]
    settings = {family: list(masks) for family, masks in families(probabilities[0], images[0]).items()}
    fitted = {family: cross_fit(table[:, :, None], 5, fold=fold, thresholds=np.arange(table.shape[1]), min_sizes=(0,))
              for family, table in tables.items()}  # each family's settings as one axis: "threshold" = its index
    base = fitted["release rule (threshold, size)"]["scores"]
    report = {}
    for family, row in fitted.items():
        diff = row["scores"] - base
        chosen = [settings[family][int(s["threshold"])] for s in row["settings"]]  # by fold
        report[family] = {"dice": row["dice"], "se": row["se"], "vs_release_rule": float(diff.mean()),
                          "vs_release_rule_se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
                          "chosen_by_fold": [list(map(float, c)) for c in chosen],
                          "gain_by_fold": [float(diff[fold == k].mean()) for k in range(5)]}
        print(f"{family:50s} {row['dice']:.4f} ± {row['se']:.4f}  paired {diff.mean():+.4f} ± "
              f"{report[family]['vs_release_rule_se']:.4f}  chosen {chosen[0]}")
    union = np.concatenate(list(tables.values()), 1)[:, :, None]  # the family chosen inside the folds too
    joint = cross_fit(union, 5, fold=fold, thresholds=np.arange(union.shape[1]), min_sizes=(0,))
    diff = joint["scores"] - base
    report["any family, chosen inside the folds"] = {
        "dice": joint["dice"], "se": joint["se"], "vs_release_rule": float(diff.mean()),
        "vs_release_rule_se": float(diff.std(ddof=1) / np.sqrt(len(diff)))}
    print(f"{'any family, chosen inside the folds':50s} {joint['dice']:.4f} ± {joint['se']:.4f}  paired "
          f"{diff.mean():+.4f} ± {report['any family, chosen inside the folds']['vs_release_rule_se']:.4f}")
    times = {}
    for fraction in (0.0, 0.3):
        sample = {"threshold": 0.5, "min_component": 10, "uptake_fraction": fraction}
        spent = []
        for p, image in zip(probabilities, images):
            start = time.perf_counter()
            tumor_mask(p, sample, image)
            spent.append(time.perf_counter() - start)
        times[fraction] = {"median_ms": 1e3 * float(np.median(spent)), "max_ms": 1e3 * float(np.max(spent))}
    report["tumor_mask_time"] = times
    print("tumor_mask per image:", times)
    (PROBS / "postprocess_study.json").write_text(json.dumps(report, indent=1))


def figure(out="docs/tumor_uptake_fraction.png"):
    """Cross-validated Dice (each fraction's threshold and size chosen inside the folds) against the uptake fraction,
    for the two releases, from `eval.crossval --checkpoint X X@uptake_fraction={...}` (runs/tumor_cv_uptake,
    runs/tumor_dcv_uptake), with the paired difference's standard error as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, run in (("segmenter (tumor_seg)", "runs/tumor_cv_uptake"),
                      ("diffusion segmenter (tumor_seg_diffusion)", "runs/tumor_dcv_uptake")):
        rows = json.loads(Path(run, "crossval.json").read_text())["candidates"]
        fractions = [float(n.split("uptake_fraction=")[1]) if "uptake_fraction=" in n else 0.0 for n in rows]
        ax.errorbar(fractions, [r["dice"] for r in rows.values()], yerr=[r["vs_first_se"] for r in rows.values()],
                    marker="o", capsize=3, label=name)
    ax.axhline(0.70, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("uptake fraction (0: no cut)")
    ax.set_ylabel("cross-validated Dice, 150 patients")
    ax.set_title("Each component cut to a share of its peak uptake", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    figure() if sys.argv[1:] == ["figure"] else main()
