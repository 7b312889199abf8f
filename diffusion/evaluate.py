"""Predicting and scoring a list of cases: the one loop behind infer.py, in-training validation and eval.ablate,
and the scoring of a folder of predictions (eval.score), with the same per-case values and summary."""
from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from diffusion.data.split import split_by_config, validation_subset
from diffusion.errors import UserError
from diffusion.data.images import write_png
from diffusion.figures import plot_cases, plot_coverage, plot_reliability
from diffusion.inference import Predictor, case_seed, to_uint8
from diffusion.config import spec_of
from diffusion.metrics import interval_bounds, interval_scale, interval_stats, patient_mean_se, timing_summary
from diffusion.tasks import Case, Task
from samplers import SamplerSpec

OVERVIEW_CASES = 4
SPLITS = ("all", "train", "val", "calib")
SPLIT_HELP = ("which cases of the data root: all (the default in every tool: a folder of new patients is scored "
              "whole), or one side of the checkpoint's patient-level split: train, val, or calib (the training "
              "patients held out to choose settings on)")


def add_split_argument(parser, default: str | None = "all") -> None:
    """`--split` with one meaning and one default in every entry point (eval.calibrate asks for it explicitly)."""
    parser.add_argument("--split", default=default, required=default is None, choices=SPLITS, help=SPLIT_HELP)


def select_cases(task: Task, root: Path, split_config: dict | None, split: str = "all", limit: int | None = None,
                 include_extra: bool = False, whose: str = "the checkpoint", members: int = 1) -> tuple[list[Case], str]:
    """(the cases of a data root on one side of a checkpoint's patient-level split, one line saying how many of how
    many were selected and why). `split_config`: the checkpoint's `data` section. With a limit on the held-out
    patients (`split` "val" or "calib"), the cases are spread over as many of them as possible. A fold ensemble
    (`members` > 1 networks of a K-fold split) has no held-out side: each patient was trained on by K-1 members; the
    inner folds of one outer fold joined (`data.inner_folds`, `eval.join`) have it: none trained on its patients."""
    if split != "all" and members > 1 and split_config and split_config.get("folds") \
            and not split_config.get("inner_folds"):
        raise UserError(f"--split {split}: {whose} is a fold ensemble of {members} networks, each trained with "
                        f"another fold held out, so every patient of its split was trained on by {members - 1} of "
                        f"them and none is held out. Score it on new patients (--split all on a folder of them), or "
                        f"its folds out of fold with `python -m eval.crossval`")
    if split == "calib" and members > 1 and split_config and split_config.get("inner_folds"):
        raise UserError(f"--split calib: {whose} joins {members} inner-fold networks, each trained on the others' "
                        f"calibration patients, so it has none; choose its settings with --split val --cross-fit K")
    found = task.layout.list_cases(root, include_extra)
    cases = found
    why = ["split all: every case"]
    if split != "all":
        calib = f"{split_config['calib_patients']} calibration patients"
        cases = split_by_config(found, split_config, split)
        folds = split_config["folds"]
        held = (f"fold {split_config['fold']} of {folds}" if folds
                else f"{split_config['val_patients']} validation patients")
        if split_config.get("inner_folds") and members > 1:
            calib = f"{members} inner-fold networks joined"
        elif split_config.get("inner_folds"):
            calib = f"inner fold {split_config['inner_fold']} of {split_config['inner_folds']} as calibration patients"
        why = [f"split {split}: the {split} side of {whose}'s patient-level split (seed {split_config['split_seed']}, "
               f"{held}, {calib})"]
    if limit and split in ("val", "calib"):
        cases = [cases[i] for i in validation_subset([c.patient for c in cases], limit)]
    if limit and len(cases) > limit:
        why.append(f"--limit {limit}")
    cases = cases[:limit] if limit else cases
    if task.layout.extra_name and not include_extra:
        extra = len(task.layout.list_cases(root, True)) - len(found)
        if extra:
            why.append(f"{extra} {task.layout.extra_name}s not included (--include-controls)")
    patients = len({c.patient for c in cases})
    line = (f"selected {len(cases)} of {len(found)} {task.name} cases ({patients} of "
            f"{len({c.patient for c in found})} patients) in {root}: {'; '.join(why)}")
    return cases, line


def scored_records(task: Task, records: list[dict]) -> list[dict]:
    """The records the task's metric averages: extra cases (healthy controls) only when there is nothing else."""
    return [r for r in records if not (task.layout.extra_name and r.get(task.layout.extra_name))] or records


def summarize(task: Task, records: list[dict]) -> dict:
    """The task's metric averaged per case (extra cases, e.g. healthy controls, only when there is nothing else),
    with its standard error over patients (`<metric>_se`, the patient as the unit)."""
    scored = scored_records(task, records)
    if not scored:
        return {}
    mean, se = patient_mean_se([r[task.metric] for r in scored], [r.get("patient", r["id"]) for r in scored])
    return {task.metric: mean, f"{task.metric}_se": se}


COVERAGE_LEVELS = (0.2, 0.5, 0.8, 0.9, 0.95)  # nominal levels of the interval reliability curve


def calibrated_margins(predictor: Predictor, spec: SamplerSpec, ensemble: int) -> dict[float, float]:
    """The conformal interval margins stored with the checkpoint (`sample.interval_margins`, by level), when this
    run samples as they were fitted (the checkpoint's own sampler, ensemble and flip); otherwise none."""
    sample = predictor.config["sample"]
    same = (spec == spec_of(sample) and ensemble == int(sample["ensemble"])
            and predictor.flip_members == bool(sample["flip"]))
    return {float(level): float(m) for level, m in (sample.get("interval_margins") or {}).items()} if same else {}


def level_bounds(members, level: float, grid: float | None, margins: dict[float, float], score: str = "shift"):
    """The per-pixel central `level` interval of the members on the answer's grid, widened by its conformal margin
    (in the unit of `score`, `interval_scale`) when there is one for that level."""
    lower, upper = interval_bounds(members, level, grid)
    if level not in margins:
        return lower, upper
    widen = margins[level] * interval_scale(lower, upper, grid, score)
    return lower - widen, upper + widen


def run_cases(task: Task, predictor: Predictor, root: Path, cases: list[Case], spec: SamplerSpec, ensemble: int | None,
              seed: int = 0, out: Path | None = None, overview: Path | None = None, progress: bool = True,
              interval: float | None = None) -> dict:
    """Predict every case (one at a time, each with its own seed: memory does not grow with the data, and a case's
    answer does not depend on the others), write the predictions in the competition's format under `out`, score
    them when the data has the truth, and draw the first few cases to `overview` (default out/overview.png).
    `interval` (e.g. 0.8): also the per-pixel central interval of the ensemble, written as interval_lower/ and
    interval_upper/ images, and, with the truth, its coverage and width over the task's predicted pixels (and the
    coverage at `COVERAGE_LEVELS`: out/interval.png). `ensemble` None: each case gets the checkpoint's own
    (`Predictor.ensemble_for`, which may depend on its size). Returns the metrics (also written to out/metrics.json)."""
    has_truth = task.layout.has_truth(root, cases)
    if interval is not None and not task.report.has_intervals:
        raise UserError(f"--interval: the {task.name} task has no per-pixel intervals")
    coverage = {level: {"pixels": 0, "covered": 0, "width": 0.0} for level in {*COVERAGE_LEVELS, interval}} \
        if interval is not None else {}
    requested, sample = ensemble, predictor.config["sample"]  # None: each case its own (Predictor.ensemble_for)
    rule = sample.get("ensemble_max_pixels") if requested is None else None
    ensemble = int(sample["ensemble"]) if requested is None else requested
    margins = calibrated_margins(predictor, spec, ensemble) if interval is not None else {}
    score = sample.get("interval_score", "shift")
    records, seconds, rows, titles = [], [], [], []
    totals: dict[str, list[float]] = {}
    for case in tqdm(cases, desc=f"{task.name} ({spec}, E={ensemble})", disable=not progress):
        start = time.perf_counter()  # the time a served request would take: reading the PNGs included
        example = task.layout.read_case(root, case, has_truth)
        members = predictor.ensemble_for(example.inputs, requested)
        prediction = predictor.predict_one(example.inputs, spec=spec, ensemble=members, seed=case_seed(case.id, seed))
        image = task.output_image(prediction)
        seconds.append(time.perf_counter() - start)
        if out is not None:
            task.layout.write_prediction(out, case, image)
        if interval is not None:
            grid = task.report.interval_resolution
            lower, upper = level_bounds(prediction.members, interval, grid, margins, score)
            if out is not None:
                for side, bound in (("lower", lower), ("upper", upper)):
                    write_png(Path(out) / f"interval_{side}" / task.layout.prediction_path(out, case).name, to_uint8(bound))
            if has_truth:
                where = task.report.interval_region(example)
                for level, totals_ in coverage.items():
                    for key, value in interval_stats(*level_bounds(prediction.members, level, grid, margins, score),
                                                     example.truth, where).items():
                        totals_[key] += value
        record = {"id": case.id, "patient": case.patient, "seconds": seconds[-1], "ensemble": members}
        if task.layout.extra_name:
            record[task.layout.extra_name] = case.extra
        if has_truth:
            record.update(task.score(image, example.truth))
            for key, (num, den) in (task.report.uncertainty_stats(example, prediction, image) or {}).items():
                totals.setdefault(key, [0, 0])
                totals[key][0] += num
                totals[key][1] += den
        records.append(record)
        if len(rows) < OVERVIEW_CASES:
            rows.append(task.report.overview_row(example, prediction, image, record))
            titles.append(case.id + (f" {task.metric.upper()} {record[task.metric]:.2f}" if has_truth else ""))
    metrics = {"task": task.name, "n": len(records), "checkpoint": predictor.checkpoint, "sampler": str(spec),
               "steps": spec.steps, "nfe": spec.nfe, "ensemble": ensemble,
               **({"ensemble_max_pixels": rule} if rule else {}), "flip": predictor.flip_members,
               **{key: sample[key] for key in task.decision_settings},
               "seconds_per_image": timing_summary(seconds)}
    if has_truth:
        metrics.update(summarize(task, records))
        if totals:
            metrics["uncertainty"] = task.report.uncertainty_summary(totals)
        if coverage:
            rate = {level: c["covered"] / max(1, c["pixels"]) for level, c in coverage.items()}
            metrics["interval"] = {"level": interval, "coverage": rate[interval],
                                   "mean_width": coverage[interval]["width"] / max(1, coverage[interval]["pixels"]),
                                   "pixels": coverage[interval]["pixels"], "margin": margins.get(interval),
                                   "score": score if interval in margins else None,
                                   "calibrated": interval in margins,
                                   "coverage_by_level": {str(level): rate[level] for level in sorted(rate)}}
            if out is not None:
                plot_coverage({f"{spec} E={ensemble}": rate}, Path(out) / "interval.png",
                              f"{task.name}: {len(records)} cases")
    metrics["cases"] = records
    overview = overview or (out / "overview.png" if out is not None else None)
    if overview is not None and rows:
        plot_cases(overview, list(task.report.overview_columns), rows, titles, list(task.report.overview_cmaps))
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "metrics.json").write_text(json.dumps(metrics, indent=1))
        if "reliability" in metrics.get("uncertainty", {}):
            plot_reliability(metrics["uncertainty"]["reliability"], Path(out) / "uncertainty.png",
                             f"{task.name}: {len(records)} cases, {spec} E={ensemble}")
    return metrics


def score_folder(task: Task, pred_dir: Path, root: Path, cases: list[Case]) -> dict:
    """Score predictions already on disk (from infer.py or any other method) in the competition's layout against
    the truth of `root`: the per-case values and the summary that `run_cases` gives for the same images."""
    records = []
    for case in tqdm(cases, desc=f"scoring {task.name}", leave=False):
        truth = task.layout.read_case(root, case, with_truth=True).truth
        record = {"id": case.id, "patient": case.patient, **({task.layout.extra_name: case.extra} if task.layout.extra_name else {})}
        record.update(task.score(task.layout.read_prediction(pred_dir, case), truth))
        records.append(record)
    summary = summarize(task, records)
    return {"task": task.name, "n": len(records), "predictions": str(pred_dir), **summary, "cases": records}


def evaluate(predictor: Predictor, data_root, spec: SamplerSpec, ensemble: int | None, split: str = "all",
             limit: int | None = None, include_extra: bool = False, seed: int = 0, out: Path | None = None,
             progress: bool = True, interval: float | None = None) -> dict:
    """The cases of a data root that (split, limit, extra cases) select, predicted and scored: shared by infer.py
    and eval.ablate. `split` refers to the checkpoint's own patient-level split."""
    task = predictor.task
    root, where = task.layout.resolve_root(data_root)
    cases, selection = select_cases(task, root, predictor.config["data"], split, limit, include_extra,
                                    whose=str(predictor.checkpoint or "the model"), members=len(predictor.models))
    if not cases:
        raise UserError(f"{root}: no {task.name} cases on the '{split}' side of {predictor.checkpoint}'s split"
                        + (" (it was trained without calibration patients)" if split == "calib" else ""))
    metrics = run_cases(task, predictor, root, cases, spec, ensemble, seed=seed, out=out, progress=progress,
                        interval=interval)
    return {**metrics, "split": split, "selection": selection, "data": where}
