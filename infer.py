"""Inference on a folder in the competition layout, for any registered task.

    python infer.py --task ct --data-root ../shared/data --limit 20 --out out/ct
    python infer.py --task ct --data-root ../shared/data --split val --sampler ddim --steps 4 --ensemble 4
    python infer.py --task tumor --data-root new_patients/ --ensemble 1     # the release without its flips
    dmiai-infer --task ct --split val            # the same, as the installed console command

Writes one prediction PNG per input (competition format), overview.png and metrics.json; the scores are those of
`python -m eval.score` on the written predictions. Without --checkpoint it uses the task's released checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from diffusion.errors import UserError, run_cli
from diffusion.evaluate import add_split_argument, calibrated_margins, evaluate
from diffusion.inference import load_predictor, released_for_sampler, resolve_spec
from diffusion.tasks import get_task, task_names
from samplers import REPAINT_JUMPS, SAMPLERS


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=task_names())
    p.add_argument("--data-root", default=None, help="data folder (default $DMIAI_DATA, ./data, ../shared/data)")
    p.add_argument("--checkpoint", default=None, help="slim .safetensors checkpoint (default: the released one)")
    p.add_argument("--out", default=None, help="output folder (default out/<task>)")
    p.add_argument("--limit", type=int, default=None,
                   help="only the first N inputs (with --split val or calib: N inputs spread over the patients)")
    p.add_argument("--sampler", default=None, help=f"one of {', '.join(SAMPLERS)} (default: the checkpoint's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the checkpoint's)")
    p.add_argument("--jumps", type=int, default=None, help=f"RePaint jump_n_sample (default {REPAINT_JUMPS})")
    p.add_argument("--ensemble", type=int, default=None,
                   help="samples per input and network, median-reduced (default: the checkpoint's sample.ensemble; "
                        "one on inputs larger than its sample.ensemble_max_pixels, if set)")
    p.add_argument("--flip", default=None, choices=["on", "off"],
                   help="odd ensemble members see the mirrored input (default: the checkpoint's sample.flip)")
    p.add_argument("--interval", type=float, default=None, metavar="LEVEL",
                   help="CT: also the per-pixel central LEVEL interval of the ensemble (e.g. 0.8; needs a stochastic "
                        "sampler and --ensemble > 1 to mean anything): interval_lower/ and interval_upper/ images, "
                        "and its coverage and width when the data has the truth; calibrated when the checkpoint has "
                        "margins from eval.calibrate_interval for this sampler and ensemble")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    add_split_argument(p)
    p.add_argument("--include-controls", action="store_true",
                   help="also the task's extra cases (tumor: the healthy controls, whose truth is an empty mask)")
    return p.parse_args(argv)


def peak_memory_mb() -> float | None:
    """Peak resident memory of this process so far (Linux and macOS), in MB."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    task = get_task(args.task)
    path = args.checkpoint or released_for_sampler(task, args.sampler)
    if not args.checkpoint and path.name != task.released:
        print(f"--sampler {args.sampler}: using the released {path.name}", file=sys.stderr)
    predictor = load_predictor(task.name, path, device=args.device)
    if args.flip is not None:
        predictor.flip_members = args.flip == "on"
    model_spec, model_ensemble = predictor.default_spec()
    spec = resolve_spec(model_spec, args.sampler, args.steps, args.jumps)
    if args.ensemble is not None and args.ensemble < 1:
        raise UserError(f"--ensemble must be >= 1, got {args.ensemble}")
    ensemble = args.ensemble or model_ensemble
    out = Path(args.out or f"out/{task.name}")
    if args.interval is not None and not 0 < args.interval < 1:
        raise UserError(f"--interval {args.interval}: a level in (0, 1), e.g. 0.8")
    if args.interval is not None:
        margins = calibrated_margins(predictor, spec, ensemble)
        print(f"--interval {args.interval}: " + (
            f"the ensemble's interval widened by {margins[args.interval]:g} (fitted on calibration patients)"
            if args.interval in margins else "the raw quantiles of the ensemble, not calibrated (they cover less "
            "than the level says; python -m eval.calibrate_interval fits a margin)"), file=sys.stderr)
    metrics = evaluate(predictor, args.data_root, spec, args.ensemble, split=args.split, limit=args.limit,
                       include_extra=args.include_controls, seed=args.seed, out=out, interval=args.interval)
    print(metrics.pop("data"), file=sys.stderr)
    print(metrics["selection"], file=sys.stderr)
    metrics["peak_memory_mb"] = peak_memory_mb()
    metrics["checkpoint"] = str(path)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    summary = {k: v for k, v in metrics.items() if k != "cases"}
    print(json.dumps(summary, indent=1))
    print(f"wrote {metrics['n']} predictions, overview.png and metrics.json to {out}", file=sys.stderr)
    return 0


def cli() -> None:
    """Console entry point `dmiai-infer`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
