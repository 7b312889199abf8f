"""Calibrate the per-pixel intervals of a CT diffusion model on calibration patients (split conformal), and store
the margins with the checkpoint, so that `infer.py --interval 0.8` covers about 80 % of the missing body pixels.

    python -m eval.calibrate_interval --checkpoint runs/ct_dif/last.safetensors --split calib --limit 40 \
        --ensemble 8 --flip on --score scaled --out runs/ct_dif/intervals.safetensors
    python infer.py --task ct --checkpoint runs/ct_dif/intervals.safetensors --split val --interval 0.8

The raw interval (the central quantiles of the ensemble's members) is overconfident: the members of a one-step
sampler nearly agree, and its nominal 80 % interval held the truth of about a fifth of the missing pixels
(docs/results/ct_inpainting.md). Conformalized quantile regression (Romano et al. 2019) fixes the level without
retraining: on calibration patients (`data.calib_patients` of the checkpoint: never trained on, never reported),
each missing body pixel's score is how far its truth lies outside the raw interval; the margin for level L is the
ceil((n + 1) L)-th smallest score, and every interval widened by it on both sides covers a new patient's truth with
probability >= L (over pixels, the patients being exchangeable). `--score scaled` measures that distance in units of
the pixel's own interval width (+1 grey level): the calibrated interval stays narrow where the members agree and
widens where they do not, so whether the members' spread carries information shows as a narrower interval at the
same coverage. The margins are fitted for the sampler, steps, ensemble and flip given here and only apply when a
run samples that way: the written checkpoint has them as its default `sample` setting. Reported (`<out>.interval.json`):
every level's margin, and its coverage and mean width on the calibration pixels before and after; the numbers to
quote are the written checkpoint's `infer.py --split val --interval L` (its validation patients).
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
from diffusion.metrics import INTERVAL_SCORES, conformal_margin, conformity_scores, interval_bounds, interval_scale
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
    p.add_argument("--score", default="shift", choices=INTERVAL_SCORES,
                   help="shift: one margin for every pixel; scaled: a margin in proportion to each pixel's interval "
                        "width (+1 grey level), wider where the members disagree")
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
        raise UserError(f"{root}: no cases on the '{args.split}' side of {args.checkpoint}'s split"
                        + (" (it was trained without calibration patients)" if args.split == "calib" else ""))
    grid = task.report.interval_resolution
    scores, widths, units = ({level: [] for level in levels} for _ in range(3))
    for case in tqdm(cases, desc=f"calibrating intervals ({spec}, E={ensemble})"):
        example = task.layout.read_case(root, case, with_truth=True)
        members = predictor.predict_one(example.inputs, spec=spec, ensemble=ensemble,
                                        seed=case_seed(case.id, args.seed)).members
        region = task.report.interval_region(example)
        for level in levels:
            lower, upper = interval_bounds(members, level, grid)
            scale = interval_scale(lower, upper, grid, args.score)
            scores[level].append(conformity_scores(lower, upper, example.truth, region, scale))
            widths[level].append((upper - lower)[region])
            units[level].append(scale[region])
    pooled, widths, units = ({level: np.concatenate(v[level]) for level in levels} for v in (scores, widths, units))
    try:
        margins = {level: conformal_margin(pooled[level], level) for level in levels}
    except ValueError as exc:
        raise UserError(f"--split {args.split}: {exc}; use more slices") from None
    state, config, meta = load_slim(args.checkpoint, expected_task="ct")
    config["sample"].update(sampler=spec.name, steps=spec.steps, jumps=spec.jumps if spec.name == "repaint"
                            else config["sample"]["jumps"], ensemble=ensemble, flip=predictor.flip_members,
                            interval_margins={str(level): margins[level] for level in levels},
                            interval_score=args.score)
    report = {"checkpoint": args.checkpoint, "split": args.split, "selection": line, "sampler": str(spec),
              "ensemble": ensemble, "flip": predictor.flip_members, "score": args.score, "slices": len(cases),
              "patients": len({c.patient for c in cases}), "pixels": int(pooled[levels[0]].size),
              "levels": {str(level): {"margin": margins[level],
                                      "coverage_raw": float((pooled[level] <= 0).mean()),
                                      "coverage_calibrated": float((pooled[level] <= margins[level]).mean()),
                                      "mean_width_raw": float(widths[level].mean()),
                                      "mean_width_calibrated": float((widths[level] + 2 * margins[level]
                                                                      * units[level]).mean())}
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
