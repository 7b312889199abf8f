"""Weight averaging ("model soup") of slim checkpoints of one network: the mean of their weights, one file.

    python -m eval.average --checkpoint runs/tumor_gpu/seg_fold0.safetensors runs/tumor_gpu2/seg_fold0.safetensors \
        --out runs/tumor_gpu_soup/seg_fold0.safetensors

Averaging pays when the checkpoints lie in one basin: a model and its own continuation (the tumor folds of issue #27:
the 740-step fold model and the same model 510 steps further, +0.014 ± 0.007 cross-validated Dice over either), or
several snapshots of one run. Models trained apart from different starts usually average to nonsense: measure the
average as one more candidate (`eval.crossval` chooses among candidates out of fold), never assume it.

Every checkpoint must build the same network (the same `model` config) for the same task and, for fold models, the
same fold of the same split (an average of two folds' models would have seen every patient of both folds). The
config (sampler defaults included) and the step are the last checkpoint's; the metadata lists the sources.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from diffusion.checkpoint import load_slim, save_slim
from diffusion.config import model_config
from diffusion.errors import UserError, run_cli


def fold_of(config: dict) -> tuple | None:
    data = config["data"]
    return (data["folds"], data["fold"], data["split_seed"]) if data.get("folds") else None


def average(paths: list[str], out: str | Path) -> Path:
    """Write the mean of the checkpoints' weights to `out`; refuse checkpoints of different networks or folds."""
    if len(paths) < 2:
        raise UserError("--checkpoint: give two or more slim checkpoints to average")
    loaded = [load_slim(p) for p in paths]
    first_state, first_config, _ = loaded[0]
    for path, (state, config, _) in zip(paths[1:], loaded[1:]):
        if config["task"] != first_config["task"] or model_config(config) != model_config(first_config):
            raise UserError(f"{path}: a different network from {paths[0]} (task or model config): no average")
        if fold_of(config) != fold_of(first_config):
            raise UserError(f"{path}: fold {fold_of(config)} but {paths[0]} is fold {fold_of(first_config)}: an "
                            f"average across folds would have trained on both folds' held-out patients")
        if state.keys() != first_state.keys():
            raise UserError(f"{path}: its weights have other names than {paths[0]}'s")
    mean = {k: sum(state[k] for state, _, _ in loaded) / len(loaded) for k in first_state}
    _, config, meta = loaded[-1]
    out = Path(out)
    save_slim(out, mean, config, {"step": meta.get("step"), "average_of": [str(p) for p in paths]})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", nargs="+", required=True, help="two or more slim checkpoints of one network")
    p.add_argument("--out", required=True, help="the averaged slim checkpoint")
    args = p.parse_args(argv)
    print(f"wrote {average(args.checkpoint, args.out)}: the mean of {len(args.checkpoint)} checkpoints")
    return 0


if __name__ == "__main__":
    run_cli(main)
