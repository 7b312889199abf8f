"""Calibrate the per-pixel intervals of a CT diffusion model on calibration patients (split conformal), and store
the margins with the checkpoint, so that `infer.py --interval 0.8` covers about 80 % of the missing body pixels.

    python -m eval.calibrate_interval --checkpoint checkpoints/ct_inpaint_diffusion.safetensors --split calib \\
        --ensemble 16 --out runs/ct_interval/calibrated.safetensors
    python infer.py --task ct --checkpoint runs/ct_interval/calibrated.safetensors --split val --interval 0.8

The raw interval (the central quantiles of the ensemble's members) is overconfident: the members of a one-step
sampler nearly agree, and its nominal 80 % interval held the truth of about a fifth of the missing pixels
(docs/results/ct_inpainting.md). Conformalized quantile regression (Romano et al. 2019) fixes the level without
retraining: on calibration patients (never trained on, never reported), each missing body pixel's score is how far
its truth lies outside the raw interval; the margin for level L is the ceil((n + 1) L)-th smallest score, and every
interval widened by it on both sides covers a new patient's truth with probability >= L (over pixels, the patients
being exchangeable). The margins are fitted for the sampler, steps, ensemble and flip given here, and only apply
when a run samples that way: the written checkpoint has them as its default `sample` setting. Reported: every
level's margin and its coverage on the calibration pixels before and after; the score to quote is the written
checkpoint's `infer.py --split val --interval L` (its validation patients).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from diffusion.checkpoint import load_slim, save_slim
from diffusion.errors import UserError, run_cli
from diffusion.evaluate import COVERAGE_LEVELS, add_split_argument, select_cases
from diffusion.inference import case_seed, load_predictor, resolve_spec
from diffusion.metrics import conformal_margin, conformity_scores, interval_bounds
from samplers import SAMPLERS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a CT diffusion model's slim checkpoint")
    p.add_argument("--data-root", default=None)
    add_split_argument(p, default=None)
    p.add_argument("--limit", type=int, default=None, help="only N slices, spread over the split's patients")
    p.add_argument("--sampler", default=None, help=f"one of {', '.join(SAMPLERS)} (default: the checkpoint's)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--ensemble", type=int, default=None, help="members per slice (default: the checkpoint's)")
    p.add_argument("--flip", default=None, choices=["on", "off"],
                   help="odd members see the mirrored input (default: the checkpoint's sample.flip)")
    p.add_argument("--levels", default=",".join(str(v) for v in COVERAGE_LEVELS),
                   help="the nominal levels to calibrate, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="where to write the checkpoint with the margins")
    args = p.parse_args(argv)
    try:
        levels = sorted({float(v) for v in args.levels.split(",")})
    except ValueError:
        raise UserError(f"--levels {args.levels!r}: comma-separated numbers in (0, 1), e.g. 0.8,0.9") from None
    if not all(0 < v < 1 for v in levels):
        raise UserError(f"--levels {args.levels}: every level must be in (0, 1)")
    predictor = load_predictor("ct", args.checkpoint)
    task = predictor.task
    if args.flip is not None:
        predictor.flip_members = args.flip == "on"
    if not task.report.has_intervals:
        raise UserError(f"{args.checkpoint}: the {task.name} task has no per-pixel intervals")
    model_spec, model_ensemble = predictor.default_spec()
    spec, ensemble = resolve_spec(model_spec, args.sampler, args.steps), args.ensemble or model_ensemble
    if predictor.members(ensemble) < 2:
        raise UserError(f"--ensemble {ensemble}: an interval needs at least 2 members")
    root, where = task.layout.resolve_root(args.data_root)
    print(where, file=sys.stderr)
    cases, line = select_cases(task, root, predictor.config["data"], args.split, args.limit, whose=args.checkpoint)
    print(line, file=sys.stderr)
    if not cases:
        raise UserError(f"{root}: no cases on the '{args.split}' side of {args.checkpoint}'s split")
    scores: dict[float, list[np.ndarray]] = {level: [] for level in levels}
    for case in tqdm(cases, desc=f"calibrating intervals ({spec}, E={ensemble})"):
        example = task.layout.read_case(root, case, with_truth=True)
        members = predictor.predict_one(example.inputs, spec=spec, ensemble=ensemble,
                                        seed=case_seed(case.id, args.seed)).members
        region = task.report.interval_region(example)
        for level in levels:
            lower, upper = interval_bounds(members, level, task.report.interval_resolution)
            scores[level].append(conformity_scores(lower, upper, example.truth, region))
    pooled = {level: np.concatenate(s) for level, s in scores.items()}
    try:
        margins = {level: conformal_margin(pooled[level], level) for level in levels}
    except ValueError as exc:
        raise UserError(f"--split {args.split}: {exc}; use more slices") from None
    state, config, meta = load_slim(args.checkpoint, expected_task="ct")
    config["sample"].update(sampler=spec.name, steps=spec.steps, jumps=spec.jumps if spec.name == "repaint"
                            else config["sample"]["jumps"], ensemble=ensemble, flip=predictor.flip_members,
                            interval_margins={str(level): margins[level] for level in levels})
    report = {"checkpoint": args.checkpoint, "split": args.split, "selection": line, "sampler": str(spec),
              "ensemble": ensemble, "flip": predictor.flip_members, "slices": len(cases),
              "patients": len({c.patient for c in cases}), "pixels": int(pooled[levels[0]].size),
              "levels": {str(level): {"margin": margins[level],
                                      "coverage_raw": float((pooled[level] <= 0).mean()),
                                      "coverage_calibrated": float((pooled[level] <= margins[level]).mean())}
                         for level in levels}}
    save_slim(Path(args.out), state, config, {**meta, "interval_calibration": report})
    Path(f"{args.out}.interval.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    print(f"wrote {args.out} (its default sampling is the calibrated one) and {args.out}.interval.json",
          file=sys.stderr)
    return 0


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
