"""Sampler ablation: every (sampler, ensemble) setting on the same slices with the same seeds.

    python -m eval.ablate --task ct --data-root ../shared/data --split val --limit 20 \
        --samplers ddpm:100,ddim:1,ddim:4,ddim:10,repaint:10x5 --ensemble 1,4 --out runs/ablation

Writes results.csv (sampler,steps,nfe,ensemble,<the task's metric>,seconds_per_image) and pareto.png. It runs
infer.py's code path (`diffusion.evaluate.evaluate`): one way to sample and score.

`distilled:K` runs the student distilled for K steps and `regressor:1` the regressor baseline: they are other
checkpoints, given with `--models PATH,PATH` (default: the task's other released checkpoints in checkpoints/).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tqdm.auto import tqdm

from diffusion.errors import UserError, run_cli
from diffusion.evaluate import add_split_argument, evaluate
from diffusion.figures import plot_coverage
from diffusion.inference import Predictor, load_predictor, other_released, released_checkpoint
from diffusion.tasks import get_task, task_names
from samplers import parse_spec


def parse_list(text: str, parse, what: str):
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise UserError(f"--{what}: empty list")
    out = []
    for item in items:
        try:
            out.append(parse(item.strip()))
        except ValueError as exc:
            raise UserError(f"--{what}: {exc}") from None
    return out


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"ensemble size must be >= 1, got {value}")
    return value


def pick_predictor(spec, predictors: list[Predictor]) -> Predictor:
    """The first predictor (the main checkpoint, then --models) whose checkpoint can run `spec`."""
    for predictor in predictors:
        try:
            predictor.check_spec(spec)
            return predictor
        except UserError:
            continue
    raise UserError(f"sampler {spec}: no checkpoint can run it ({', '.join(p.checkpoint for p in predictors)}); "
                    f"pass the distilled student or the regressor with --models")


def other_models(task: str, text: str | None, main: Path) -> list[Path]:
    if text:
        paths = [Path(t.strip()) for t in text.split(",") if t.strip()]
        for path in paths:
            if not path.is_file():
                raise UserError(f"--models: {path} does not exist")
        return paths
    return [p for p in other_released(task) if p.resolve() != main.resolve()]


def plot_pareto(rows: list[dict], path: Path, metric: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for ens in sorted({r["ensemble"] for r in rows}):
        pts = [r for r in rows if r["ensemble"] == ens]
        ax.scatter([r["seconds_per_image"] for r in pts], [r[metric] for r in pts], label=f"ensemble {ens}")
        for r in pts:
            ax.annotate(r["sampler"], (r["seconds_per_image"], r[metric]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.axvline(10, color="red", lw=0.8, ls="--", label="10 s budget")
    ax.set(xlabel="seconds per image (log)", ylabel=metric.upper(), title="sampler ablation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=task_names())
    p.add_argument("--data-root", default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--models", default=None,
                   help="comma-separated checkpoints for distilled:K and regressor:1 (default: the task's other "
                        "released checkpoints)")
    p.add_argument("--samplers", required=True, help="comma-separated NAME:STEPS specs (repaint: STEPSxJUMPS)")
    p.add_argument("--ensemble", default="1", help="comma-separated ensemble sizes")
    p.add_argument("--limit", type=int, default=None)
    add_split_argument(p)
    p.add_argument("--include-controls", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--interval", type=float, default=None, metavar="LEVEL",
                   help="CT: also the coverage and mean width of each setting's per-pixel central LEVEL interval "
                        "(columns coverage, mean_width) and every setting's coverage curve (coverage.png)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    metric = get_task(args.task).metric
    columns = ["sampler", "steps", "nfe", "ensemble", metric, "seconds_per_image"]
    if args.interval is not None:
        columns += ["coverage", "mean_width"]
    curves = {}
    specs = parse_list(args.samplers, parse_spec, "samplers")
    ensembles = parse_list(args.ensemble, positive_int, "ensemble")
    main_path = Path(args.checkpoint or released_checkpoint(args.task))
    predictors = [load_predictor(args.task, main_path, device=args.device)]
    if any(s.name in ("distilled", "regressor") for s in specs):
        predictors += [load_predictor(args.task, path, device=args.device)
                       for path in other_models(args.task, args.models, main_path)]
    for spec in specs:  # fail before the first (long) setting, not in the middle
        pick_predictor(spec, predictors)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    settings = [(s, e) for s in specs for e in ensembles]
    for spec, ens in tqdm(settings, desc="settings"):
        metrics = evaluate(pick_predictor(spec, predictors), args.data_root, spec, ens, split=args.split,
                           limit=args.limit, include_extra=args.include_controls, seed=args.seed, progress=False,
                           interval=args.interval)
        row = {"sampler": str(spec), "steps": spec.steps, "nfe": spec.nfe, "ensemble": ens,
               metric: round(metrics.get(metric, float("nan")), 4),
               "seconds_per_image": round(metrics["seconds_per_image"]["mean"], 4)}
        if "interval" in metrics:
            row.update(coverage=round(metrics["interval"]["coverage"], 4),
                       mean_width=round(metrics["interval"]["mean_width"], 3))
            curves[f"{spec} E={ens}"] = {float(k): v for k, v in metrics["interval"]["coverage_by_level"].items()}
        if not rows:
            tqdm.write(metrics["selection"])
        rows.append(row)
        tqdm.write(", ".join(f"{k}={v}" for k, v in row.items()))
        with open(out / "results.csv", "w", newline="") as f:  # rewritten after every setting
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    plot_pareto(rows, out / "pareto.png", metric)
    if curves:
        plot_coverage(curves, out / "coverage.png", f"{args.task}: per-pixel interval coverage")
    print(f"wrote {out / 'results.csv'} and {out / 'pareto.png'}" + (" and coverage.png" if curves else ""))
    return 0


def cli() -> None:
    """Console entry point `dmiai-ablate`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
