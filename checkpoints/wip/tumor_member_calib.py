"""Issue #27: the two networks of each fold of the release, calibrated apart before they are averaged?

Each single-network arm of the lever table chose the grid's top threshold (0.95) while the release's average of a GPU
and a CPU network per fold chose 0.5, and on fold 0 the CPU network alone (0.740 cross-fitted) scores above the
release there (0.707). So: does shifting each run's logits by its own threshold before averaging help, with every
choice made inside the folds?

    python checkpoints/wip/tumor_member_calib.py predict   # each fold's two networks (flip pair each) on its patients
    python checkpoints/wip/tumor_member_calib.py analyse   # the candidates, cross-fitted by fold, paired vs the mean

Candidates: the release's mean of probabilities (first); the mean after a logit shift per run, p -> sigmoid(logit(p)
- logit(t_run)) for the GPU run's and the CPU run's thresholds t on a grid; the mean of logits; each run alone. Each
candidate's threshold and component size (and in the joint choice, the candidate) chosen on the other folds
(eval.calibrate.cross_fit with the patients' folds), as eval.crossval does.
"""
import json
import sys
from itertools import product
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from oof import held_out

from diffusion.checkpoint import fold_members
from diffusion.inference import Predictor, build_denoiser, case_seed
from diffusion.tasks import get_task
from eval.calibrate import compare_candidates, cross_fit, dice_table

RELEASE = "checkpoints/tumor_seg.safetensors"
OUT = Path("runs/tumor_member_probs")


def predict(root=None):
    task = get_task("tumor")
    root, _ = task.layout.resolve_root(root)
    members = fold_members(RELEASE, expected_task="tumor")
    OUT.mkdir(parents=True, exist_ok=True)
    index = {}
    folds = []  # each fold's two networks, one predictor each
    for k in range(5):
        folds.append([])
        for state, config, meta in members[2 * k: 2 * k + 2]:
            assert config["data"]["fold"] == k, (k, meta)
            denoiser = build_denoiser(config)
            denoiser.net.load_state_dict(state)
            folds[-1].append(Predictor([denoiser], config, checkpoint=RELEASE))
    for k, case, example in held_out(task, root, [f[0].config["data"] for f in folds], OUT, index, RELEASE):
        probs = [net.predict_one(example.inputs, seed=case_seed(case.id)).probability for net in folds[k]]
        np.savez_compressed(OUT / f"{case.id}.npz", gpu=probs[0].astype(np.float16), cpu=probs[1].astype(np.float16),
                            truth=example.truth.astype(np.uint8))
    (OUT / "index.json").write_text(json.dumps(index))


def logit(p):
    p = np.clip(p.astype(np.float32), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def analyse():
    index = json.loads((OUT / "index.json").read_text())
    ids = list(index)
    fold = np.array([index[i] for i in ids])
    data = [np.load(OUT / f"{i}.npz") for i in tqdm(ids, desc="load")]
    truths = [d["truth"] for d in data]
    gl = [logit(d["gpu"]) for d in data]
    cl = [logit(d["cpu"]) for d in data]
    sig = lambda x: 1 / (1 + np.exp(-x))
    candidates = {"mean (the release)": [(sig(g) + sig(c)) / 2 for g, c in zip(gl, cl)]}
    for tg, tc in product((0.3, 0.5, 0.7, 0.9), (0.5, 0.7, 0.9, 0.95)):
        if (tg, tc) == (0.5, 0.5):
            continue
        a, b = float(logit(np.array(tg))), float(logit(np.array(tc)))
        candidates[f"shift gpu {tg} cpu {tc}"] = [(sig(g - a) + sig(c - b)) / 2 for g, c in zip(gl, cl)]
    candidates["mean of logits"] = [sig((g + c) / 2) for g, c in zip(gl, cl)]
    candidates["gpu alone"] = [sig(g) for g in gl]
    candidates["cpu alone"] = [sig(c) for c in cl]
    names = list(candidates)
    table = np.stack([dice_table(candidates[n], truths) for n in tqdm(names, desc="sweep")], 1)
    rows = compare_candidates(table, 5, names, fold=fold)
    joint = cross_fit(table[:, : len(names) - 3], 5, fold=fold)  # the choice among the ensembles inside the folds
    report = {n: {k: v for k, v in r.items() if k != "scores"} for n, r in rows.items()}
    report["joint choice among the ensembles"] = {"dice": joint["dice"], "se": joint["se"],
                                                  "settings": joint["settings"]}
    base = rows[names[0]]["scores"]
    diff = np.array(joint["scores"]) - np.array(base)
    report["joint choice among the ensembles"]["vs_first"] = float(diff.mean())
    report["joint choice among the ensembles"]["vs_first_se"] = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    (OUT / "analysis.json").write_text(json.dumps(report, indent=1))
    for n, r in report.items():
        print(f"{n:40s} {r['dice']:.4f} ± {r['se']:.4f}  vs mean {r.get('vs_first', 0):+.4f} ± {r.get('vs_first_se', 0):.4f}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    {"predict": predict, "analyse": analyse}[sys.argv[1]]()
