"""Side by side: several models and inference settings on the same cases with the same seeds, one table.

    python -m eval.compare --task tumor --data-root new_patients/ --out runs/compare_tumor \\
        --variant "name=released" \\
        --variant "name=released no flip,flip=0" \\
        --variant "name=diffusion,checkpoint=checkpoints/tumor_seg_diffusion.safetensors"

A variant is comma-separated KEY=VALUE pairs: `name`, `checkpoint` (default: the task's released one) and any of the
checkpoint's `sample` settings to override: sampler=ddim:4 (NAME:STEPS, repaint:STEPSxJUMPS), ensemble=8, flip=0|1,
threshold=0.4, min_component=25, uptake_fraction=0.3, ensemble_max_pixels=240000. Every variant runs infer.py's
loop (`diffusion.evaluate.run_cases`) on the same cases: `--split` refers to the checkpoints' own patient-level split,
and the variants must agree on it.

Writes results.csv and results.md (per variant: the task's metric with its standard error over patients, the paired
difference to the first variant with its standard error over patients, network evaluations, seconds per image median
and p95), cases.csv (every case x variant) and compare.png. Nothing is chosen here: choose on calibration patients
(eval.calibrate), then compare on the reported ones.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from tqdm.auto import tqdm

from diffusion.errors import UserError, run_cli
from diffusion.evaluate import add_split_argument, run_cases, scored_records, select_cases
from diffusion.inference import Predictor, load_predictor, released_checkpoint
from diffusion.metrics import patient_mean_se
from diffusion.tasks import get_task, task_names
from samplers import parse_spec

SETTING_TYPES = {"ensemble": int, "steps": int, "jumps": int, "min_component": int, "threshold": float,
                 "ensemble_max_pixels": int, "uptake_fraction": float}


def parse_flag(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 0 or 1, got {text!r}")


def parse_variant(text: str) -> dict:
    """'name=a,checkpoint=p,sampler=ddim:4,ensemble=8' -> {"name", "checkpoint", "settings": {...}}."""
    variant: dict = {"name": None, "checkpoint": None, "settings": {}}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise UserError(f"--variant {text!r}: {item!r} is not KEY=VALUE")
        try:
            if key in ("name", "checkpoint"):
                variant[key] = value
            elif key == "sampler":
                spec = parse_spec(value)
                variant["settings"].update(sampler=spec.name, steps=spec.steps, jumps=spec.jumps)
            elif key == "flip":
                variant["settings"]["flip"] = parse_flag(value)
            elif key in SETTING_TYPES:
                variant["settings"][key] = SETTING_TYPES[key](value)
            else:
                raise ValueError(f"unknown key {key!r}; known: name, checkpoint, sampler, flip, "
                                 + ", ".join(SETTING_TYPES))
        except ValueError as exc:
            raise UserError(f"--variant {text!r}: {exc}") from None
    variant["name"] = variant["name"] or text
    return variant


def load_variants(task_name: str, variants: list[dict], device: str) -> list[Predictor]:
    """One predictor per variant; a checkpoint used by several variants is loaded once."""
    loaded: dict[str, Predictor] = {}
    predictors = []
    for v in variants:
        path = Path(v["checkpoint"] or released_checkpoint(task_name))
        if not path.is_file():
            raise UserError(f"--variant {v['name']!r}: checkpoint {path} does not exist")
        if str(path) not in loaded:
            loaded[str(path)] = load_predictor(task_name, path, device=device)
        predictors.append(loaded[str(path)].with_sample(**v["settings"]))
    return predictors


def common_cases(task, root: Path, predictors: list[Predictor], names: list[str], split: str, limit, extra: bool):
    """The cases every variant selects; an error when their checkpoints split the patients differently."""
    chosen = None
    for name, predictor in zip(names, predictors):
        cases, line = select_cases(task, root, predictor.config["data"], split, limit, extra,
                                   whose=str(predictor.checkpoint), members=len(predictor.models))
        if chosen is None:
            chosen, first = cases, name
            print(line, file=sys.stderr)
        elif [c.id for c in cases] != [c.id for c in chosen]:
            raise UserError(f"--split {split}: variants {first!r} and {name!r} select different cases (their "
                            f"checkpoints split the patients differently); compare them with --split all on a "
                            f"data root neither trained on")
    if not chosen:
        raise UserError(f"{root}: no {task.name} cases on the '{split}' side of the checkpoints' split")
    return chosen


def table_rows(task, names: list[str], results: list[dict]) -> list[dict]:
    """Per variant: the metric and its SE over patients, the paired difference to the first variant and its SE."""
    metric = task.metric
    reference = {r["id"]: r[metric] for r in scored_records(task, results[0]["cases"])}
    rows = []
    for name, result in zip(names, results):
        scored = scored_records(task, result["cases"])
        mean, se = patient_mean_se([r[metric] for r in scored], [r["patient"] for r in scored])
        diff, diff_se = patient_mean_se([r[metric] - reference[r["id"]] for r in scored],
                                        [r["patient"] for r in scored])
        timing = result["seconds_per_image"]
        # members per case: the size rule (ensemble_max_pixels) may give a tall case fewer
        nfe = result["nfe"] * float(np.mean([r["ensemble"] for r in result["cases"]]))
        rows.append({"variant": name, "checkpoint": result["checkpoint"], "sampler": result["sampler"],
                     "nfe": int(nfe) if nfe.is_integer() else round(nfe, 2),
                     "ensemble": result["ensemble"], "flip": result["flip"],
                     **({"threshold": result["threshold"]} if "threshold" in result else {}),
                     "cases": len(scored), "patients": len({r["patient"] for r in scored}),
                     metric: round(mean, 4), f"{metric}_se": round(se, 4),
                     "difference": round(diff, 4), "difference_se": round(diff_se, 4),
                     "seconds_median": round(timing["median"], 3), "seconds_p95": round(timing["p95"], 3)})
    return rows


def markdown(rows: list[dict], metric: str) -> str:
    lines = [f"| variant | network evaluations | {metric.upper()} ± SE | vs first ± SE | s/image median (p95) |",
             "|---|---:|---:|---:|---:|"]
    for i, r in enumerate(rows):
        diff = "—" if i == 0 else f"{r['difference']:+.3f} ± {r['difference_se']:.3f}"
        lines.append(f"| {r['variant']} | {r['nfe']} | {r[metric]:.3f} ± {r[metric + '_se']:.3f} | {diff} | "
                     f"{r['seconds_median']:.2f} ({r['seconds_p95']:.2f}) |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], metric: str, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5))
    y = list(range(len(rows)))[::-1]
    ax.errorbar([r[metric] for r in rows], y, xerr=[r[metric + "_se"] for r in rows], fmt="o", capsize=3)
    ax.axvline(rows[0][metric], color="grey", lw=0.8, ls="--")
    ax.set_yticks(y, [r["variant"] for r in rows])
    ax.set(xlabel=f"{metric.upper()} (± SE over patients)")
    fig.suptitle(title, fontsize=9, wrap=True)  # the figure's width, not the axes': long data paths stay readable
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=task_names())
    p.add_argument("--variant", action="append", required=True, help="KEY=VALUE,... (repeat; the first is the "
                                                                       "reference of the differences)")
    p.add_argument("--data-root", default=None)
    add_split_argument(p)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--include-controls", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    task = get_task(args.task)
    variants = [parse_variant(text) for text in args.variant]
    names = [v["name"] for v in variants]
    if len(set(names)) != len(names):
        raise UserError(f"--variant: names must differ ({', '.join(names)})")
    predictors = load_variants(task.name, variants, args.device)
    root, where = task.layout.resolve_root(args.data_root)
    cases = common_cases(task, root, predictors, names, args.split, args.limit, args.include_controls)
    if not task.layout.has_truth(root, cases):
        raise UserError(f"{root}: the selected {task.name} cases have no truth to compare against")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, predictor in tqdm(list(zip(names, predictors)), desc="variants"):
        spec, _ = predictor.default_spec()  # and each case's own ensemble (Predictor.ensemble_for)
        results.append(run_cases(task, predictor, root, cases, spec, None, seed=args.seed, progress=False))
        tqdm.write(f"{name}: {task.metric} {results[-1][task.metric]:.4f} ± {results[-1][task.metric + '_se']:.4f}")
    rows = table_rows(task, names, results)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(out / "cases.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "patient", *names])
        for i, case in enumerate(cases):
            writer.writerow([case.id, case.patient, *(r["cases"][i][task.metric] for r in results)])
    text = markdown(rows, task.metric)
    (out / "results.md").write_text(text)
    plot(rows, task.metric, out / "compare.png", f"{task.name}: {len(cases)} cases, split {args.split} ({where})")
    print(text)
    print(f"wrote results.csv, results.md, cases.csv and compare.png to {out}")
    return 0


def cli() -> None:
    """Console entry point `dmiai-compare`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
