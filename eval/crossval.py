"""K-fold cross-validation of tumor segmenters and their fold ensemble (nnU-Net's habit).

    for k in 0 1 2 3 4; do python train_diffusion.py --config configs/tumor_folds_cpu.yaml --out runs/tumor_fold$k \\
        --set data.fold=$k; done
    python -m eval.crossval --checkpoint runs/tumor_fold{0,1,2,3,4}/last.safetensors --out runs/tumor_cv \\
        --release checkpoints/tumor_seg_folds.safetensors

Each fold model (trained with `data.folds: K`, `data.fold: k`) predicts the patients of its own held-out fold, and
only those: every patient gets one out-of-fold probability map (the model's default ensemble, e.g. the flip pair).
The threshold and minimum component size are then chosen on out-of-fold predictions only, and scored honestly by
cross-fitting over the training folds: the patients of fold k are scored with the setting chosen on the other
folds' patients. That cross-validated Dice (mean over patients, standard error over patients) is the estimate for
the released setting; the setting chosen on all the out-of-fold predictions is what the release uses.

Several checkpoints per fold are candidates (a lever on and off, e.g. one and two training cycles):

    python -m eval.crossval --checkpoint runs/tumor_fold{0,1,2,3,4}/last.safetensors \\
        runs/tumor_fold{0,1,2,3,4}_more/last.safetensors --out runs/tumor_cv_more

each fold's checkpoints in the order given; every candidate predicts its fold's held-out patients, the candidate is
chosen out of fold with the threshold and size (inside the cross-fitting too), and `candidates` in the report has
each one's own cross-validated Dice and its paired difference from the first, with standard errors over patients.

A fold ensemble (a `--release` file) stands for its K fold models (each member records its fold), and `PATH@KEY=VALUE,...`
scores a candidate with other sample settings than its own, e.g. a released diffusion segmenter at one DDIM step
and four members per network against its default, out of fold, without writing a file:

    python -m eval.crossval --checkpoint checkpoints/tumor_seg_diffusion.safetensors \
        checkpoints/tumor_seg_diffusion.safetensors@steps=1,ensemble=4 --out runs/tumor_dcv_sampler

Independently trained runs of the same folds ensemble fold by fold with `+`: each fold's networks of every run
predict that fold's patients together (their probabilities averaged), e.g. the release beside a second run of folds:

    python -m eval.crossval --checkpoint checkpoints/tumor_seg.safetensors \
        "checkpoints/tumor_seg.safetensors+runs/tumor_fold0/last.safetensors+...+runs/tumor_fold4/last.safetensors" \
        --out runs/tumor_cv_runs --release runs/tumor_seg_runs.safetensors

Candidates that differ only in the settings that turn the probability into the mask (`threshold`, `min_component`,
`uptake_fraction`: `TumorTask.decision_settings`) share one prediction per patient, so a post-processing lever costs
no network evaluation, e.g. the release against its masks cut at 0.2-0.4 of each component's peak uptake, the
fraction chosen inside the folds with the threshold and size:

    python -m eval.crossval --checkpoint checkpoints/tumor_seg.safetensors \
        checkpoints/tumor_seg.safetensors@uptake_fraction={0.2,0.3,0.4} --out runs/tumor_cv_uptake

`--release` writes the fold ensemble: one slim checkpoint holding every fold's networks (`member<k>.` keys, in
shards of at most 25 MB when larger, `diffusion.checkpoint.save_slim`), sampled with each network's default
ensemble (members = networks x that ensemble), the chosen threshold and component size. It has
no held-out score of its own in `../shared/` (each patient was trained on by K-1 of its members); the unseen
patients are its check. `--against CHECKPOINT` (e.g. today's release, trained on another split) scores that model on
its own validation patients beside their out-of-fold Dice, paired: two recipes side by side on patients neither
trained on. `<out>/crossval.png` shows the per-patient Dice by fold (and the pairs); `<out>/crossval.json` has the
per-patient out-of-fold Dice, the sweep, the chosen settings and the uncertainty report (error rate of the pixels
where the members disagree against the rest).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from diffusion.checkpoint import ensemble_state, fold_members, save_slim
from diffusion.errors import UserError, run_cli
from diffusion.evaluate import select_cases
from diffusion.figures import plot_folds
from diffusion.inference import Predictor, build_denoiser, case_seed, load_predictor
from diffusion.metrics import patient_mean_se
from diffusion.tasks import get_task
from diffusion.tasks.tumor.postprocess import tumor_mask
from eval.calibrate import MIN_SIZES, THRESHOLDS, best_cell, compare_candidates, cross_fit, describe, dice_table

SPREAD_HIGH = 0.1  # a pixel whose members' probabilities spread more than this is "uncertain"


def parse_entry(text: str) -> tuple[str, dict]:
    """A `--checkpoint` entry: `PATH`, or `PATH@KEY=VALUE[,KEY=VALUE...]` with sample settings (values read as YAML)
    that the candidate uses instead of the checkpoint's own, e.g. `...@steps=1,ensemble=4`."""
    path, at, settings = text.partition("@")
    pairs = {}
    for item in settings.split(",") if at else []:
        key, eq, value = item.partition("=")
        if not (eq and key.strip() and value.strip()):
            raise UserError(f"--checkpoint {text!r}: expected PATH or PATH@KEY=VALUE[,KEY=VALUE...] with sample "
                            f"settings, e.g. {path}@steps=1,ensemble=4")
        pairs[key.strip()] = yaml.safe_load(value)
    return path, pairs


def fold_entries(text: str, loaded: dict | None = None) -> list[tuple[str, Predictor, list[tuple[str, dict]]]]:
    """One `--checkpoint` entry as (name, predictor, [(name, meta) of each of its networks]) per fold in it: a fold
    model's slim checkpoint, or a fold ensemble's networks fold by fold (`--release` records each member's fold),
    with the entry's sample settings applied. `A+B[@settings]` joins several runs' fold models fold by fold: each
    fold's predictor holds that fold's networks of every run (an ensemble of independently trained runs), which
    must be one network of one split. `loaded` (path -> its networks) shares the networks of a file between entries:
    the same objects, so that predictions can be shared too."""
    paths, settings = parse_entry(text)
    loaded = {} if loaded is None else loaded
    by_fold: dict[int, list] = {}
    several = False
    for path in paths.split("+"):
        if path not in loaded:
            members = fold_members(path, expected_task="tumor")
            loaded[path] = []
            for k, (state, config, meta) in enumerate(members):
                denoiser = build_denoiser(config)
                denoiser.net.load_state_dict(state)
                loaded[path].append((path if len(members) == 1 else f"{path} member {k}", denoiser, config, meta))
        several |= len(loaded[path]) > 1
        for name, denoiser, config, meta in loaded[path]:
            by_fold.setdefault(int(config["data"]["fold"]), []).append((name, denoiser, config, meta))
    entries = []
    for fold, networks in by_fold.items():
        first, config = networks[0][0], networks[0][2]
        for name, _, other, _ in networks[1:]:
            if other["model"] != config["model"] or other["data"]["folds"] != config["data"]["folds"] \
                    or other["data"]["split_seed"] != config["data"]["split_seed"]:
                raise UserError(f"--checkpoint {text!r}: {name} is not the network and split of {first} (an "
                                f"ensemble of runs joins the fold models of one network and one split)")
        predictor = Predictor([denoiser for _, denoiser, _, _ in networks], config, checkpoint=paths.split("+")[0])
        try:
            predictor = predictor.with_sample(**settings) if settings else predictor
        except UserError as exc:
            raise UserError(f"--checkpoint {text!r}: {exc}") from None
        entries.append((f"{text} member {fold}" if several else text, predictor,
                        [(name, meta) for name, _, _, meta in networks]))
    return entries


def fold_models(paths: list[str]) -> list[list[tuple[str, Predictor, dict]]]:
    """The checkpoints as candidates x folds: [[(name, predictor, meta) of fold 0..K-1] per candidate]. They must be
    the K folds of one split, each fold given the same number of times; a fold's checkpoints are its candidates in
    the order given (e.g. all folds after one cycle, then all folds after two). A fold ensemble stands for its K
    fold models."""
    by_fold: dict[int, list] = {}
    splits = set()
    loaded: dict = {}
    for text in paths:
        for name, predictor, meta in fold_entries(text, loaded):
            data = predictor.config["data"]
            if not data["folds"]:
                raise UserError(f"{name}: not a fold model (trained with data.folds 0); train with --set "
                                f"data.folds=K --set data.fold=k")
            by_fold.setdefault(int(data["fold"]), []).append((name, predictor, meta))
            splits.add((int(data["folds"]), int(data["split_seed"])))
    got = sorted(by_fold)
    counts = {len(v) for v in by_fold.values()}
    if len(splits) != 1 or got != list(range(next(iter(splits))[0])) or len(counts) != 1:
        raise UserError(f"--checkpoint: expected folds 0..K-1 of one split (one data.folds, one data.split_seed), each "
                        f"fold as often as the others, got folds {sorted(k for k, v in by_fold.items() for _ in v)}")
    return [[by_fold[k][c] for k in got] for c in range(counts.pop())]


def candidate_name(folds: list[tuple]) -> str:
    """A short name for one candidate's fold checkpoints in the figure: the part of the fold paths that names the
    candidate, with the part that varies by fold as {k} (runs/tumor_soup0/seg/last.safetensors, runs/tumor_soup1/...
    -> tumor_soup{k}/seg/last; runs/tumor_gpu_soup/seg_fold0.safetensors, ... -> tumor_gpu_soup/seg_fold{k}; fold
    files named apart by more than their number: the first and the last, `wip/tumor_lever_all_last …
    wip/tumor_fold4_last`), or a fold ensemble's file name with its sample settings
    (tumor_seg_diffusion@steps=1,ensemble=4); runs joined with `+` by their parts (tumor_seg + tumor_fold{k}_last)."""
    name = folds[0][0]
    path, at, settings = name.split(" member ")[0].partition("@")
    if "+" in path:  # runs joined fold by fold: the first run's name + the others' (fold files named as above)
        parts = path.split("+")
        rest = candidate_name([(part,) for part in parts[1:]]) if len(parts) > 2 else Path(parts[1]).stem
        return f"{Path(parts[0]).stem} + {rest}{at}{settings}"
    if " member " in name:
        return Path(path).stem + at + settings
    parts = [Path(f[0].partition("@")[0]).with_suffix("").parts for f in folds]
    last = len(parts[0]) - 1
    # from the first path component that differs between the folds (the last one when none does), with its folder
    # when it is the file name
    first = next((i for i, level in enumerate(zip(*parts)) if len(set(level)) > 1), last)
    texts = ["/".join(p[max(first - (first == last), 0):]) for p in parts]
    lead = os.path.commonprefix(texts).rstrip("0123456789")  # the fold number is replaced whole (fold1x, x = 0..4)
    tail = os.path.commonprefix([t[::-1] for t in texts])[::-1].lstrip("0123456789")
    if len(texts) > 1 and len(lead) + len(tail) < min(map(len, texts)):
        if all(re.fullmatch(re.escape(lead) + r"\d+" + re.escape(tail), text) for text in texts):
            return lead + "{k}" + tail + at + settings
        return f"{texts[0]} … {texts[-1]}{at}{settings}"  # fold files named apart, not by their number alone
    return texts[0] + at + settings


def prediction_key(predictor: Predictor, decision_settings: tuple[str, ...]) -> tuple:
    """What a predictor's probability depends on: its networks (as objects) and its sample settings other than the
    decision settings. Two candidates with one key predict the same probability for a patient."""
    sample = {k: v for k, v in predictor.config["sample"].items() if k not in decision_settings}
    return tuple(map(id, predictor.models)), json.dumps(sample, sort_keys=True, default=str)


def against(task, root, checkpoint: str, out_of_fold: dict[str, float]) -> dict:
    """A model of another split (trained without these folds, e.g. the release) scored on its own validation
    patients, against the out-of-fold (cross-fitted) Dice of the same patients: neither saw them in training and
    neither chose a setting on them, so the paired difference compares the two recipes side by side."""
    reference = load_predictor("tumor", checkpoint)
    cases, line = select_cases(task, root, reference.config["data"], "val", None, whose=checkpoint)
    cases = [case for case in cases if case.id in out_of_fold]
    if len(cases) < 2:
        raise UserError(f"--against {checkpoint}: fewer than two of its validation patients were scored out of fold")
    print(f"against: {line}", file=sys.stderr)
    theirs = []
    for case in tqdm(cases, desc="against"):
        example = task.layout.read_case(root, case, with_truth=True)
        prediction = reference.predict_one(example.inputs, seed=case_seed(case.id))
        theirs.append(task.score(task.output_image(prediction), example.truth)["dice"])  # as infer.py scores it
    ours = [out_of_fold[case.id] for case in cases]
    patients = [case.patient for case in cases]
    rows = {"dice": theirs, "out_of_fold_dice": ours, "out_of_fold_minus_it": list(np.subtract(ours, theirs))}
    return {"checkpoint": checkpoint, "patients": len(set(patients)), "ids": [case.id for case in cases],
            "per_patient": theirs,
            **{name: dict(zip(("mean", "se"), patient_mean_se(v, patients))) for name, v in rows.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="the K fold models' slim checkpoints, or a fold ensemble (its members); several per fold are "
                        "candidates chosen out of fold. PATH@KEY=VALUE,... : with other sample settings (e.g. "
                        "@steps=1,ensemble=4)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--limit", type=int, default=None, help="only the first N patients of each fold (a dry run)")
    p.add_argument("--out", required=True, help="folder for crossval.json")
    p.add_argument("--release", default=None, help="also write the fold ensemble as this slim checkpoint")
    p.add_argument("--against", default=None, metavar="CHECKPOINT",
                   help="side by side with a model of another split (e.g. today's release) on its own validation "
                        "patients: its Dice there against the out-of-fold Dice of the same patients, paired")
    args = p.parse_args(argv)
    task = get_task("tumor")
    candidates = fold_models(args.checkpoint)
    root, where = task.layout.resolve_root(args.data_root)
    print(where, file=sys.stderr)
    truths, ids, fold_of = [], [], []
    probabilities = [[] for _ in candidates]              # [candidate][patient]
    errors = [{"high": [0, 0], "low": [0, 0]} for _ in candidates]  # [wrong, pixels] where members disagree / agree
    images = []
    for k, (_, first, _) in enumerate(candidates[0]):
        cases, line = select_cases(task, root, first.config["data"], "val", args.limit, whose=str(first.checkpoint))
        print(f"fold {k}: {line}", file=sys.stderr)
        for case in tqdm(cases, desc=f"fold {k} out-of-fold"):
            example = task.layout.read_case(root, case, with_truth=True)
            truths.append(example.truth)
            images.append(example.inputs["image"])
            ids.append(case.id)
            fold_of.append(k)
            shared = {}  # candidates that differ only in their decision settings: one prediction
            for c, models in enumerate(candidates):
                predictor = models[k][1]
                key = prediction_key(predictor, task.decision_settings)
                if key not in shared:
                    shared[key] = predictor.predict_one(example.inputs, seed=case_seed(case.id))
                prediction = shared[key]
                probabilities[c].append(prediction.probability)
                mask = tumor_mask(prediction.probability, predictor.config["sample"], example.inputs["image"])
                wrong = mask.astype(bool) != example.truth.astype(bool)
                uncertain = prediction.uncertainty > SPREAD_HIGH
                for name, pixels in (("high", uncertain), ("low", ~uncertain)):
                    errors[c][name][0] += int(wrong[pixels].sum())
                    errors[c][name][1] += int(pixels.sum())
    if len(set(ids)) != len(ids):
        raise UserError("a patient is in the held-out side of two folds: the checkpoints are not one split's folds")
    fractions = []  # each candidate's uptake cut, one for all its folds (the threshold and size are chosen anew)
    for models in candidates:
        own = {float(predictor.config["sample"]["uptake_fraction"]) for _, predictor, _ in models}
        if len(own) > 1:
            raise UserError(f"{models[0][0]}: its folds cut at different uptake fractions {sorted(own)}; give the "
                            f"candidate one with @uptake_fraction=F")
        fractions.append(own.pop())
    sweeps = tqdm(list(zip(probabilities, fractions)), desc="threshold x size sweep (candidates)")  # minutes with many
    table = np.stack([dice_table(probs, truths, images=images, uptake_fraction=fraction)
                      for probs, fraction in sweeps], 1)  # (patients, candidates, thresholds, sizes)
    index, pooled = best_cell(table)
    chosen = describe(index)
    pick = chosen.pop("checkpoint")
    chosen["uptake_fraction"] = fractions[pick]
    fold = np.array(fold_of)
    fitted = cross_fit(table, len(candidates[0]), fold=fold)
    untuned = table[:, pick, list(THRESHOLDS).index(0.5), 0]
    default = [float(m.config["sample"]["threshold"]) for _, m, _ in candidates[pick]]
    high, low = errors[pick]["high"], errors[pick]["low"]
    report = {
        "folds": len(candidates[0]), "patients": len(ids), "checkpoints": [name for name, _, _ in candidates[pick]],
        "cross_validated_dice": fitted["dice"], "cross_validated_se": fitted["se"],
        "settings_per_fold": fitted["settings"], "chosen": {**chosen, "candidate": pick, "dice_in_sample": pooled},
        "untuned_dice": float(untuned.mean()), "untuned_se": patient_mean_se(list(untuned), ids)[1],
        "fold_thresholds_before": default,
        "uncertainty": {"spread_over": SPREAD_HIGH, "high_share": high[1] / max(1, high[1] + low[1]),
                        "high_error_rate": high[0] / max(1, high[1]), "low_error_rate": low[0] / max(1, low[1])},
        "per_patient": {i: {"fold": f, "dice": float(d), "dice_untuned": float(u)}
                        for i, f, d, u in zip(ids, fold_of, fitted["scores"], untuned)},
        "sweep": {f"{t}/{m}": float(table[:, pick, j, k].mean()) for j, t in enumerate(THRESHOLDS)
                  for k, m in enumerate(MIN_SIZES)},
    }
    per_candidate = [fitted["scores"]]
    if len(candidates) > 1:
        names = [" ".join(dict.fromkeys(n.split(" member ")[0] for n, _, _ in models)) for models in candidates]
        report["candidates"] = compare_candidates(table, len(candidates[0]), names, fold=fold)
        per_candidate = [np.array(row["scores"]) for row in report["candidates"].values()]
    pairs = None
    if args.against:
        report["against"] = against(task, root, args.against, dict(zip(ids, fitted["scores"])))
        pairs = {"name": Path(args.against).name, "theirs": report["against"]["per_patient"],
                 "ours": [report["per_patient"][i]["dice"] for i in report["against"]["ids"]]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "crossval.json").write_text(json.dumps(report, indent=1))
    by_fold = {f"candidate {c}: {candidate_name(candidates[c])}" if len(candidates) > 1 else "out of fold":
               [list(fitted_scores[fold == k]) for k in range(len(candidates[0]))]
               for c, fitted_scores in enumerate(per_candidate)}
    plot_folds(by_fold, out / "crossval.png", pairs)
    if args.release:
        chosen_folds = candidates[pick]  # in fold order
        config = copy.deepcopy(chosen_folds[0][1].config)
        config["data"]["fold"] = 0
        config["sample"]["threshold"], config["sample"]["min_component"] = chosen["threshold"], chosen["min_component"]
        states, members = [], []  # fold by fold, each fold's networks; a re-released member keeps its origin
        for k, (_, predictor, networks) in enumerate(chosen_folds):
            for model, (name, meta) in zip(predictor.models, networks):
                states.append(model.net.state_dict())
                members.append({**meta, "fold": k, "checkpoint": name, **(
                    {"trained_as": meta.get("trained_as", meta["checkpoint"])} if "checkpoint" in meta else {})})
        save_slim(Path(args.release), ensemble_state(states),
                  config, {"members": len(states), "member_meta": members,
                           "cross_validated_dice": fitted["dice"], "cross_validated_se": fitted["se"],
                           "threshold_split": "out-of-fold", "crossval": str(out / "crossval.json")})
        report["release"] = args.release
    shown = {k: v for k, v in report.items() if k not in ("sweep", "per_patient", "against", "candidates")}
    shown["candidates"] = {name: {k: v for k, v in row.items() if k != "scores"}
                           for name, row in report.get("candidates", {}).items()} or None
    print(json.dumps(shown, indent=1))
    if args.against:
        print(json.dumps({k: v for k, v in report["against"].items() if k not in ("ids", "per_patient")}, indent=1))
    return 0


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
