"""Export a slim checkpoint as a diffusers pipeline folder (save_pretrained layout), with its model card.

    python -m eval.export --checkpoint checkpoints/ct_inpaint.safetensors --out exported/ct_inpaint
    python -m eval.export --checkpoint checkpoints/tumor_seg.safetensors --out exported/tumor_seg

The folder holds model_index.json, unet/ (a diffusers `UNet2DModel`: config.json and half-precision safetensors;
a fold ensemble's further networks as unet_member1/ ...), scheduler/ (the `DDPMScheduler` config of the noise
schedule) and README.md: the checkpoint's model card (`<checkpoint stem>.md` beside it, or --card) under a YAML
header (license, library, tags). Load it with
`CTInpaintPipeline.from_pretrained(DIR)` / `TumorSegmentationPipeline.from_pretrained(DIR)` from
`diffusion.pipelines`, or the network alone with `UNet2DModel.from_pretrained(DIR, subfolder="unet")`.
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import torch

from diffusion.errors import UserError, run_cli
from diffusion.pipelines import cast, pipeline_for

LICENSE = "mit"
PIPELINE_TAGS = {"ct": "image-to-image", "tumor": "image-segmentation"}


def card_header(task: str, checkpoint: Path) -> str:
    """The YAML header of an exported model card (the fields a model hub reads)."""
    tags = ["medical-imaging", "diffusion", "dmiai", {"ct": "ct-inpainting", "tumor": "tumor-segmentation"}[task]]
    return "\n".join(["---", f"license: {LICENSE}", "library_name: diffusers", f"pipeline_tag: {PIPELINE_TAGS[task]}",
                      "tags:", *[f"- {t}" for t in tags], "---", ""])


def usage(pipeline, out: Path) -> str:
    name = type(pipeline).__name__
    call = ("corrupted=corrupted, mask=mask, tissue=tissue, vertebra=12" if pipeline.task_name == "ct" else "image=pet")
    doc = inspect.cleandoc(type(pipeline).__doc__ or "")
    return (f"## How to use\n\n```python\nfrom diffusion.pipelines import {name}   # pip install this repository\n\n"
            f"pipe = {name}.from_pretrained(\"{out}\")\nout = pipe({call})   # out.prediction, out.uncertainty\n```\n\n"
            f"The network alone: `UNet2DModel.from_pretrained(\"{out}\", subfolder=\"unet\")`.\n\n"
            f"## Inputs and outputs\n\n{doc}\n\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="slim .safetensors checkpoint of this repository")
    p.add_argument("--out", required=True, help="folder to write (created; files in it are replaced)")
    p.add_argument("--card", default=None, help="model card to include (default: <checkpoint stem>.md beside it)")
    args = p.parse_args(argv)
    checkpoint, out = Path(args.checkpoint), Path(args.out)
    pipeline = pipeline_for(checkpoint)
    card = Path(args.card) if args.card else checkpoint.with_suffix(".md")
    if args.card and not card.is_file():
        raise UserError(f"--card {card} does not exist")
    for net in pipeline.networks:
        cast(net, torch.float16)  # the slim weights are half precision already: nothing is lost
    pipeline.save_pretrained(out, safe_serialization=True)
    body = card.read_text() if card.is_file() else f"# {checkpoint.name}\n\n(no model card was found beside it)\n"
    (out / "README.md").write_text(card_header(pipeline.task_name, checkpoint) + usage(pipeline, out) + body)
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    print(json.dumps({"out": str(out), "pipeline": type(pipeline).__name__, "size_mb": round(size_mb, 2),
                      "card": str(card) if card.is_file() else None}))
    if not card.is_file():
        print(f"warning: no model card {card}; README.md says so", file=sys.stderr)
    return 0


def cli() -> None:
    """Console entry point `dmiai-export`."""
    run_cli(main)


if __name__ == "__main__":
    cli()
