"""Score a folder of predictions in the competition's layout with this repository's metrics, whatever made them.

    python -m eval.score --task ct --pred out/ct --data-root ../shared/data --out runs/score_ct
    python -m eval.score --task tumor --pred other_method/ --data-root new_patients/ --out runs/score
    dmiai-score --task ct --pred out/ct --out runs/score_ct          # the installed console command

`--pred` holds the task's prediction files (CT: reconstructed/reconstructed_PPP_S.png; tumor:
predictions/segmentation_PPP.png), as infer.py writes them. The cases are those of the data root (optionally one
side of a checkpoint's patient-level split, `--split` with `--checkpoint`); a missing prediction is an error naming
the file. Writes `cases.json` (per-case values) and `summary.json`; on infer.py's own output the numbers are
exactly infer.py's (the same `Task.score` and summary, `diffusion.evaluate`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from diffusion.checkpoint import read_slim_config
from diffusion.errors import UserError, run_cli
from diffusion.evaluate import add_split_argument, score_folder, select_cases
from diffusion.inference import released_checkpoint
from diffusion.tasks import get_task, task_names


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=task_names())
    p.add_argument("--pred", required=True, help="folder of predictions in the competition's layout")
    p.add_argument("--data-root", default=None, help="data folder with the truth (default $DMIAI_DATA, ./data, ...)")
    add_split_argument(p)
    p.add_argument("--checkpoint", default=None, help="whose split --split means (default: the released one)")
    p.add_argument("--limit", type=int, default=None, help="as infer.py's --limit")
    p.add_argument("--include-controls", action="store_true", help="also the task's extra cases (tumor: controls)")
    p.add_argument("--out", required=True, help="where to write cases.json and summary.json")
    args = p.parse_args(argv)
    task = get_task(args.task)
    pred = Path(args.pred)
    if not pred.is_dir():
        raise UserError(f"--pred {pred}: folder does not exist")
    root, _where = task.layout.resolve_root(args.data_root)
    split_config, members = None, 1
    if args.split != "all":
        config, meta = read_slim_config(args.checkpoint or released_checkpoint(task), expected_task=task.name)
        split_config, members = config["data"], meta.get("members", 1)
    cases, selection = select_cases(task, root, split_config, args.split, args.limit, args.include_controls,
                                    whose=str(args.checkpoint or "the released checkpoint"), members=members)
    print(selection, file=sys.stderr)
    if not task.layout.has_truth(root, cases):
        raise UserError(f"{root}: the data root has no ground truth to score against")
    result = score_folder(task, pred, root, cases)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cases.json").write_text(json.dumps(result["cases"], indent=1))
    summary = {k: v for k, v in result.items() if k != "cases"}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


def cli() -> None:
    """Console entry point `dmiai-score`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
