"""Join slim checkpoints of one network into one ensemble file: each network kept apart as a member (each with its
default ensemble, all the members' probabilities averaged); `eval.average` averages the weights instead.

    python -m eval.join --checkpoint runs/tumor_nest{0,1,2,3,4}/last.safetensors --out runs/tumor_nest.safetensors

Made for the inner-fold models of a nested cross-validation (`data.inner_folds`: inside one outer fold, each inner
model trained without one inner fold of its training patients): joined, they are nnU-Net's fold ensemble with the
outer fold's validation patients still held out from every member, so `infer.py --split val`, `eval.compare` and
`eval.calibrate --split val --cross-fit K` score it there beside a single network of the same outer fold ("folds 1 vs
5"). Every checkpoint must build the same network for the same task and hold out the same validation patients (one
outer fold of one split, or one `val_patients` split); the inner folds' calibration sides differ, so the joined file
has none (`--split calib` is refused). For the fold models of a whole cross-validation use `eval.crossval` (`A+B`
joins runs fold by fold; `--release` writes the fold ensemble). The config (sampler defaults included) is the first
checkpoint's; `member_meta` records each member's source and inner fold.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from diffusion.checkpoint import ensemble_state, load_slim, save_slim
from diffusion.config import model_config
from diffusion.errors import UserError, run_cli


def held_out(config: dict) -> tuple:
    """What decides a checkpoint's validation patients: the outer split."""
    data = config["data"]
    return (data["split_seed"], data["folds"], data["fold"]) if data["folds"] else (data["split_seed"],
                                                                                     data["val_patients"])


def join(paths: list[str], out: str | Path) -> Path:
    """Write the checkpoints as the members of one slim checkpoint; refuse other networks or validation sides, and
    several-network checkpoints (join their sources instead)."""
    if len(paths) < 2:
        raise UserError("--checkpoint: give two or more slim checkpoints to join")
    loaded = [load_slim(p) for p in paths]
    first_state, first_config, _ = loaded[0]
    for path, (state, config, meta) in zip(paths, loaded):
        if meta.get("members", 1) > 1:
            raise UserError(f"{path}: already an ensemble of {meta['members']} networks; join single networks")
        if config["task"] != first_config["task"] or model_config(config) != model_config(first_config) \
                or state.keys() != first_state.keys():
            raise UserError(f"{path}: a different network from {paths[0]} (task or model config): no ensemble")
        if held_out(config) != held_out(first_config):
            raise UserError(f"{path}: holds out other validation patients than {paths[0]} (split {held_out(config)} "
                            f"against {held_out(first_config)}): joined, no patient would be held out from all")
    members = [{"checkpoint": str(path), "fold": config["data"]["fold"],
                **({"inner_fold": config["data"]["inner_fold"]} if config["data"].get("inner_folds") else {}),
                "step": meta.get("step")} for path, (_, config, meta) in zip(paths, loaded)]
    out = Path(out)
    save_slim(out, ensemble_state([state for state, _, _ in loaded]), first_config,
              {"members": len(loaded), "member_meta": members, "joined_from": [str(p) for p in paths]})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", nargs="+", required=True, help="two or more slim checkpoints of one network")
    p.add_argument("--out", required=True, help="the joined slim checkpoint")
    args = p.parse_args(argv)
    print(f"wrote {join(args.checkpoint, args.out)}: {len(args.checkpoint)} networks as one ensemble")
    return 0


if __name__ == "__main__":
    run_cli(main)
