"""Copy a slim checkpoint into checkpoints/ with its default inference settings chosen by measurement.

    python -m eval.release --checkpoint runs/ct_cpu_ft/best.safetensors --out checkpoints/ct_inpaint.safetensors \
        --set sample.ensemble=2 --set sample.flip=true

Only `sample.*` may change: the weights and every other part of the config stay as trained.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffusion.checkpoint import load_slim, save_slim, slim_files
from diffusion.config import apply_overrides
from diffusion.errors import UserError, run_cli
from diffusion.inference import load_predictor


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], metavar="sample.KEY=VALUE")
    args = p.parse_args(argv)
    if any(not s.startswith("sample.") for s in args.set):
        raise UserError("--set: only sample.* settings may change at release")
    state, config, meta = load_slim(args.checkpoint)
    config = apply_overrides(config, args.set)  # load_slim filled the keys added since it was trained
    save_slim(Path(args.out), state, config, {**meta, "released_from": str(args.checkpoint)})
    try:  # the default setting must be one this model can run (e.g. a regressor only as regressor:1)
        predictor = load_predictor(config["task"], args.out)
        predictor.check_spec(predictor.default_spec()[0])
    except UserError:
        for file in slim_files(args.out):
            file.unlink()
        raise
    sizes_mb = [round(file.stat().st_size / 1e6, 2) for file in slim_files(args.out)]  # save_slim shards at 24.5 MB
    print(json.dumps({"out": args.out, "size_mb": sizes_mb[0] if len(sizes_mb) == 1 else sizes_mb,
                      "sample": config["sample"]}))
    return 0


if __name__ == "__main__":
    run_cli(main)
