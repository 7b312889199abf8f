"""Inference on a folder in the competition layout.

    python infer.py --task ct --data-root ../shared/data --limit 20 --out out/ct
    python infer.py --task ct --data-root ../shared/data --split val --sampler ddim --steps 4 --ensemble 4
    python infer.py --task tumor --data-root ../shared/data --split val --ensemble 3

Writes one prediction PNG per input (competition format), overview.png and metrics.json.
Without --checkpoint it uses the released checkpoint of the task in checkpoints/.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffusion.data import list_ct_ids, resolve_task_root, split_indices, validation_subset
from diffusion.data.ct import read_slice
from diffusion.data.images import write_png
from diffusion.data.tumor import list_tumor_cases, read_tumor_case
from diffusion.errors import UserError, run_cli
from diffusion.inference import (
    RELEASED,
    CTInpainter,
    TumorSegmenter,
    case_seed,
    load_predictor,
    to_uint8,
)
from diffusion.metrics import dice_score, image_mae, timing_summary, tp_fp_fn
from diffusion.figures import plot_cases
from samplers import SAMPLERS, SamplerSpec, parse_spec


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=["ct", "tumor"])
    p.add_argument("--data-root", default=None, help="data folder (default $DMIAI_DATA, ./data, ../shared/data)")
    p.add_argument("--checkpoint", default=None, help="slim .safetensors checkpoint (default: the released one)")
    p.add_argument("--out", default=None, help="output folder (default out/<task>)")
    p.add_argument("--limit", type=int, default=None,
                   help="only the first N inputs (with --split val: N slices spread over the patients)")
    p.add_argument("--sampler", default=None, help=f"one of {', '.join(SAMPLERS)} (default: the checkpoint's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the checkpoint's)")
    p.add_argument("--jumps", type=int, default=None, help="RePaint jump_n_sample (default 10)")
    p.add_argument("--ensemble", type=int, default=None, help="samples per input, median-reduced")
    p.add_argument("--flip", default=None, choices=["on", "off"],
                   help="odd ensemble members see the mirrored input (default: the checkpoint's sample.flip)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="all", choices=["all", "train", "val"],
                   help="restrict to the checkpoint's patient-level split (default: every input)")
    p.add_argument("--include-controls", action="store_true",
                   help="tumor: also segment the healthy controls (their truth is an empty mask)")
    return p.parse_args(argv)


def resolve_spec(model_spec: SamplerSpec, sampler: str | None, steps: int | None, jumps: int | None) -> SamplerSpec:
    name = sampler or model_spec.name
    if steps is None:
        steps = model_spec.steps if name == model_spec.name else {"ddpm": 1000, "ddim": 50, "repaint": 50}.get(name, 1)
    text = f"{name}:{steps}" + (f"x{jumps or 10}" if name == "repaint" else "")
    try:
        return parse_spec(text)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def run_ct(args, inpainter: CTInpainter, spec: SamplerSpec, ensemble: int, out: Path, progress: bool = True) -> dict:
    root, where = resolve_task_root("ct", args.data_root)
    if progress:
        print(where, file=sys.stderr)
    ids = list_ct_ids(root)
    if args.split != "all":
        dc = inpainter.config["data"]
        keep = split_indices([i.split("_")[0] for i in ids], dc["val_patients"], dc["split_seed"], args.split)
        ids = [ids[i] for i in keep]
    if args.limit and args.split == "val":  # N slices spread over as many validation patients as possible
        ids = [ids[i] for i in validation_subset([i.split("_")[0] for i in ids], args.limit)]
    ids = ids[: args.limit] if args.limit else ids
    has_truth = (root / "ct").is_dir()
    cases, seconds, overview_rows, titles = [], [], [], []
    for sid in tqdm(ids, desc=f"inpainting ({spec}, E={ensemble})", disable=not progress):
        start = time.perf_counter()  # the time a served request would take: reading the PNGs included
        item = read_slice(root, sid, has_truth)  # one slice at a time: memory does not grow with the data set
        pred = inpainter.predict_batch(item["corrupted"][None], (item["mask"][None] > 0).astype(np.uint8),
                                       item["tissue"][None], np.array([item["vertebra"]]), spec=spec,
                                       ensemble=ensemble, seeds=[case_seed(sid, args.seed)])[0]
        image = to_uint8(pred.image)
        seconds.append(time.perf_counter() - start)
        if out is not None:
            write_png(out / "reconstructed" / f"reconstructed_{sid}.png", image)
        case = {"id": sid, "seconds": seconds[-1]}
        if has_truth:
            case["mae"] = image_mae(image, item["ct"])
        cases.append(case)
        if len(overview_rows) < 4:
            error = np.abs(image.astype(np.float32) - item["ct"]) if has_truth else None
            overview_rows.append([item["corrupted"], image, item.get("ct"), error, pred.uncertainty])
            titles.append(sid + (f" MAE {case['mae']:.2f}" if has_truth else ""))
    metrics = {"task": "ct", "n": len(cases), "checkpoint": inpainter.checkpoint, "sampler": str(spec),
               "steps": spec.steps, "nfe": spec.nfe, "ensemble": ensemble, "flip": inpainter.flip_members,
               "split": args.split,
               "seconds_per_image": timing_summary(seconds)}
    if has_truth:
        metrics["mae"] = float(np.mean([c["mae"] for c in cases]))
    metrics["cases"] = cases
    if out is not None:
        plot_cases(out / "overview.png", ["corrupted", "prediction", "truth", "|error|", "uncertainty"], overview_rows,
                   titles, ["gray", "gray", "gray", "magma", "viridis"])
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def outcome_colours(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """RGB: true positives white, false positives red, false negatives blue."""
    p, t = prediction > 0, truth > 0
    rgb = np.zeros((*p.shape, 3), np.uint8)
    rgb[p & t], rgb[p & ~t], rgb[~p & t] = (255, 255, 255), (230, 40, 40), (40, 90, 255)
    return rgb


def run_tumor(args, segmenter: TumorSegmenter, spec: SamplerSpec, ensemble: int, out: Path | None,
              progress: bool = True) -> dict:
    root, where = resolve_task_root("tumor", args.data_root)
    if progress:
        print(where, file=sys.stderr)
    cases = list_tumor_cases(root, include_controls=getattr(args, "include_controls", False))
    if args.split != "all":
        dc = segmenter.config["data"]
        patients = [c for c in cases if not c[3]]
        keep = set(split_indices([c[0] for c in patients], dc["val_patients"], dc["split_seed"], args.split))
        cases = [c for i, c in enumerate(patients) if i in keep] + [c for c in cases if c[3]]
    cases = cases[: args.limit] if args.limit else cases
    has_truth = all(c[2] is not None and c[2].is_file() or c[3] for c in cases)
    results, seconds, overview_rows, titles = [], [], [], []
    counts = {"low": [0, 0], "high": [0, 0]}  # [errors, pixels] on low / high uncertainty pixels
    for cid, image_path, label_path, control in tqdm(cases, desc=f"segmenting ({spec}, E={ensemble})",
                                                     disable=not progress):
        start = time.perf_counter()
        image, label = read_tumor_case(image_path, label_path if has_truth and not control else None)
        pred = segmenter.predict(image, spec=spec, ensemble=ensemble, seed=case_seed(cid, args.seed))
        seconds.append(time.perf_counter() - start)
        if out is not None:
            name = f"segmentation_{cid.split('_')[1]}.png" if not control else f"{cid}_segmentation.png"
            write_png(out / "predictions" / name, np.repeat(pred.image[..., None], 3, 2))
        case = {"id": cid, "seconds": seconds[-1], "control": control}
        if has_truth:
            truth = label if label is not None else np.zeros_like(image)
            case["dice"] = dice_score(pred.image, truth)
            case["tp"], case["fp"], case["fn"] = tp_fp_fn(pred.image, truth)
            wrong = (pred.image > 0) != (truth > 0)
            high = pred.uncertainty > 0.1
            for key, where_ in (("low", ~high), ("high", high)):
                counts[key][0] += int(wrong[where_].sum())
                counts[key][1] += int(where_.sum())
        results.append(case)
        if len(overview_rows) < 4:
            truth_img = (label * 255 if label is not None else None) if has_truth else None
            outcome = outcome_colours(pred.image, label if label is not None else np.zeros_like(image)) \
                if has_truth else pred.image
            overview_rows.append([image, truth_img, outcome, pred.uncertainty])
            titles.append(cid + (f" Dice {case['dice']:.2f}" if has_truth else ""))
    metrics = {"task": "tumor", "n": len(results), "checkpoint": segmenter.checkpoint, "sampler": str(spec),
               "steps": spec.steps, "nfe": spec.nfe, "ensemble": ensemble, "flip": segmenter.flip_members,
               "threshold": segmenter.threshold,
               "split": args.split, "seconds_per_image": timing_summary(seconds)}
    if has_truth:
        scored = [c for c in results if not c["control"]] or results
        metrics["dice"] = float(np.mean([c["dice"] for c in scored]))  # per image, then averaged (patients only)
        metrics["uncertainty"] = {f"error_rate_{k}": (e / n if n else None) for k, (e, n) in counts.items()}
        metrics["uncertainty"]["high_share"] = counts["high"][1] / max(1, counts["high"][1] + counts["low"][1])
    metrics["cases"] = results
    if out is not None:
        plot_cases(out / "overview.png", ["PET", "truth", "prediction (TP white, FP red, FN blue)", "uncertainty"],
                   overview_rows, titles, ["gray", "gray", "rgb", "viridis"])
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def run_task(args, predictor, spec: SamplerSpec, ensemble: int, out: Path | None, progress: bool = True) -> dict:
    """The one way to sample and score, shared by infer.py and eval.ablate."""
    if isinstance(predictor, CTInpainter):
        return run_ct(args, predictor, spec, ensemble, out, progress)
    return run_tumor(args, predictor, spec, ensemble, out, progress)


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
    predictor = load_predictor(args.task, args.checkpoint or RELEASED[args.task], device=args.device)
    if args.flip is not None:
        predictor.flip_members = args.flip == "on"
    model_spec, model_ensemble = predictor.default_spec()
    spec = resolve_spec(model_spec, args.sampler, args.steps, args.jumps)
    ensemble = args.ensemble or model_ensemble
    if ensemble < 1:
        raise UserError(f"--ensemble must be >= 1, got {ensemble}")
    out = Path(args.out or f"out/{args.task}")
    metrics = run_task(args, predictor, spec, ensemble, out)
    metrics["peak_memory_mb"] = peak_memory_mb()
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    summary = {k: v for k, v in metrics.items() if k != "cases"}
    print(json.dumps(summary, indent=1))
    print(f"wrote {metrics['n']} predictions, overview.png and metrics.json to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
