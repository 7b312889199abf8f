"""Issue #27: zoomed views as test-time augmentation for the segmenter release, out of fold.

Zoom (0.8-1.25) and rotation were the training lever of the fold recipe (+0.14 on fold 0), and the flip pair at test
time is worth +0.021 to the release. Does a zoomed view at test time add to the flip pair? Each fold's two networks
of the release (flip pair each) predict that fold's 30 patients at each scale of `SCALES` (the whole image resized by
the factor, the position channel kept anatomical: a row of the resized image carries the position of the row it came
from), the probability resized back to the image; then candidates (scale 1 alone = the release, and averages with the
zoomed views) are scored with threshold and component size cross-fitted by fold, 30 % uptake cut as the release,
paired against the release (what eval.crossval does):

    python checkpoints/wip/tumor_scale_tta.py predict   # runs/tumor_scale_tta/<case>.npz
    python checkpoints/wip/tumor_scale_tta.py analyse   # runs/tumor_scale_tta/analysis.json
"""
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from oof import held_out

from diffusion.data.images import crop_back, pad_to_multiple
from diffusion.inference import Predictor, case_seed
from diffusion.tasks import get_task
from diffusion.tasks.tumor.layout import MAX_HEIGHT
from eval.calibrate import compare_candidates, cross_fit, dice_table
from eval.crossval import fold_entries

RELEASE = "checkpoints/tumor_seg.safetensors"
OUT = Path("runs/tumor_scale_tta")
SCALES = (1.0, 0.8, 1.25)


def view_probability(predictor: Predictor, image: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """The fold ensemble's mean probability (flip pair per network) on the image resized by `scale`, back at the
    image's size."""
    h, w = image.shape
    if scale == 1.0:
        return predictor.predict_one({"image": image}, seed=seed).probability
    sh, sw = round(h * scale), round(w * scale)
    small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    padded = pad_to_multiple(small, predictor.multiple, 255)
    cond = predictor.task.condition(torch.from_numpy(np.ascontiguousarray(padded))[None], torch.zeros(1, dtype=torch.long))
    rows = torch.arange(padded.shape[0], dtype=torch.float32) / scale  # the original row each resized row came from
    cond[:, 1] = (rows / MAX_HEIGHT * 2 - 1).view(-1, 1).expand_as(cond[0, 1])
    spec, ensemble = predictor.default_spec()
    x0 = predictor.sample(cond, None, spec, ensemble, [seed])
    probability = crop_back((x0[:, 0].clamp(-1, 1) + 1) / 2, (sh, sw)).mean(0).numpy()
    return cv2.resize(probability, (w, h), interpolation=cv2.INTER_LINEAR)


def predict(root=None):
    task = get_task("tumor")
    root, _ = task.layout.resolve_root(root)
    OUT.mkdir(parents=True, exist_ok=True)
    index = {}
    predictors = [predictor for _, predictor, _ in fold_entries(RELEASE)]  # each fold's networks, as eval.crossval
    assert [p.config["data"]["fold"] for p in predictors] == list(range(5))
    for k, case, example in held_out(task, root, [p.config["data"] for p in predictors], OUT, index, RELEASE):
        image = example.inputs["image"]
        views = {f"s{s}": view_probability(predictors[k], image, s, case_seed(case.id)).astype(np.float16)
                 for s in SCALES}
        np.savez_compressed(OUT / f"{case.id}.npz", image=image, truth=example.truth.astype(np.uint8), **views)
    (OUT / "index.json").write_text(json.dumps(index))


def analyse():
    index = json.loads((OUT / "index.json").read_text())
    ids = list(index)
    fold = np.array([index[i] for i in ids])
    data = [dict(np.load(OUT / f"{i}.npz")) for i in tqdm(ids, desc="load")]
    truths, images = [d["truth"] for d in data], [d["image"] for d in data]
    view = {s: [d[f"s{s}"].astype(np.float32) for d in data] for s in SCALES}
    candidates = {"scale 1 (the release)": view[1.0]}
    for s in SCALES[1:]:
        candidates[f"scale {s} alone"] = view[s]
        candidates[f"scales 1 + {s}"] = [(a + b) / 2 for a, b in zip(view[1.0], view[s])]
    candidates["all scales"] = [sum(v) / len(SCALES) for v in zip(*view.values())]
    names = list(candidates)
    table = np.stack([dice_table(candidates[n], truths, images=images, uptake_fraction=0.3)
                      for n in tqdm(names, desc="sweep")], 1)
    rows = compare_candidates(table, 5, names, fold=fold)
    ensembles = [j for j, n in enumerate(names) if "alone" not in n]
    joint = cross_fit(table[:, ensembles], 5, fold=fold)  # the choice among the ensembles, made inside the folds
    report = {n: {k: v for k, v in r.items() if k != "scores"} for n, r in rows.items()}
    base = np.array(rows[names[0]]["scores"])
    for n, r in rows.items():
        diff = np.array(r["scores"]) - base
        report[n]["vs_release"], report[n]["vs_release_se"] = float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))
        report[n]["better_worse"] = [int((diff > 1e-9).sum()), int((diff < -1e-9).sum())]
    diff = np.array(joint["scores"]) - base
    report["joint choice among the ensembles"] = {
        "dice": joint["dice"], "se": joint["se"], "settings": joint["settings"], "vs_release": float(diff.mean()),
        "vs_release_se": float(diff.std(ddof=1) / np.sqrt(len(diff)))}
    (OUT / "analysis.json").write_text(json.dumps(report, indent=1))
    for n, r in report.items():
        print(f"{n:36s} {r['dice']:.4f} ± {r['se']:.4f}  vs release {r['vs_release']:+.4f} ± {r['vs_release_se']:.4f}"
              f"  {r.get('better_worse', '')}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    {"predict": predict, "analyse": analyse}[sys.argv[1]]()
