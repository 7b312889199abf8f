"""Issue #27 on one lent GPU, inside a fixed time budget: the five fold segmenters and, warm-started from them, the
five diffusion segmenters, all five folds side by side, with the GPU smoke check running beside the first minute.

    python checkpoints/wip/tumor_gpu_folds.py --pack-data ../shared/data   # here: gpu_data/, 31 MB (ignored by git)
    # then, through the device tool, with carry [".whl", "gpu_data"] (the wheels of diffusers, fastapi, uvicorn and
    # their missing needs, as ../.library/device/README.md shows) and the other checkpoints moved out of the tree:
    python3 checkpoints/wip/tumor_gpu_folds.py --data-root gpu_data --out $OUT --budget 435
    # the second run (2026-12-04, evening): every fold goes on from its member of the release, batch 64; the CT
    # release stays behind (the tree's 64 MiB), so the smoke check's CT rows read the model its CT row trains
    python3 checkpoints/wip/tumor_gpu_folds.py --data-root gpu_data --out $OUT --budget 560 --batch 64 \
        --seg-share 0.55 --init-seg checkpoints/tumor_seg.safetensors \
        --smoke-args "--checkpoint ct=/tmp/tumor_gpu/smoke/train_ct_gpu_eager/last.safetensors"
    # (since 2026-12-06 checkpoints/tumor_seg.safetensors holds two runs per fold: pass its GPU half, `git show
    # 0e582be:checkpoints/tumor_seg.safetensors > seg_gpu.safetensors`, as --init-seg)
    # next: the diffusion folds only, longer, each from its member of the diffusion release (keep only that release
    # in the tree: 24.3 MB + data + wheels is 65.6 MB of the 67.1 allowed), then out of fold on the CPU with the
    # released sampler (the in-training curve stays DDIM-2 x 1, as in runs 1 and 2):
    python3 checkpoints/wip/tumor_gpu_folds.py --data-root gpu_data --out $OUT --budget 560 --batch 64 \
        --init-dif checkpoints/tumor_seg_diffusion.safetensors --smoke-args "--checkpoint \
        ct=/tmp/tumor_gpu/smoke/train_ct_gpu_eager/last.safetensors --checkpoint \
        tumor=/tmp/tumor_gpu/smoke/train_tumor_gpu_eager/last.safetensors"
    python -m eval.crossval --checkpoint "checkpoints/tumor_seg_diffusion.safetensors@steps=1,ensemble=4" \
        $(for k in 0 1 2 3 4; do echo "dif_fold$k.safetensors@steps=1,ensemble=4"; done) --out runs/tumor_dcv_gpu3

The data travels as lossless WebP (the tool carries at most 64 MiB; the PNGs are 65 MB, with three identical
channels and an alpha), written under the original file names: the loader decodes by content, and reads exactly the
arrays of `../shared/data` (checked when packing).

The recipe is `configs/tumor_folds_cpu.yaml` (every lever of the CPU folds) with batch 32 and as many steps as the
budget allows: a probe of all five folds side by side measures the steps per second, then each family gets its share
of the budget as a whole cosine schedule (`train.max_steps` set from the probe, so the learning rate anneals to zero;
`--max-minutes` only as a safety). The diffusion family is the recipe of `tumor_folds.sh` (bce_dice on the x0
estimate, timesteps biased to high noise, DDIM-2, one member per fold). Nothing is chosen here: the slim weights come
back (tarred, split below the tool's file size) and `eval.crossval` chooses threshold and component size out of fold
on the CPU. A fold that fails stops the run early with its log, so the rest of the device time is not spent.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import gpu_runner as gr
from gpu_runner import log

FOLDS = range(5)
EXTRA: list[str] = []  # --extra: appended to every training command (a dry run on the CPU with a tiny model)
RECIPE = ["--config", "configs/tumor_folds_cpu.yaml", "--set", "train.num_workers=3", "--set", "train.log_every=10"]
DIFFUSION = ["--set", "diffusion.objective=diffusion", "--set", "diffusion.timestep_power=0.3", "--set", "train.lr=2e-4",
             "--set", "train.warmup_steps=50", "--set", "sample.sampler=ddim", "--set", "sample.steps=2",
             "--set", "sample.ensemble=1", "--set", "sample.flip=false"]


def fold_args(data_root: str, extra) -> gr.ArgsOf:
    """Fold k's training arguments: the recipe, fold k of the split, `extra(k)` (its warm start, its family)."""
    return lambda k: [*RECIPE, "--data-root", data_root, "--set", f"data.fold={k}", *extra(k), *EXTRA]


def fold_inits(checkpoint: Path, work: Path, family: str = "seg") -> list[Path]:
    """Member k of a fold ensemble (eval.crossval --release writes the members in fold order, each trained on the
    training patients of its fold only) as fold k's own slim checkpoint: the warm start of fold k, which never saw
    fold k's held-out patients."""
    from diffusion.checkpoint import fold_members, save_slim

    members = fold_members(checkpoint, expected_task="tumor")
    folds = [config["data"]["fold"] for _, config, _ in members]
    if folds != list(FOLDS) or members[0][1]["data"]["folds"] != len(FOLDS):
        raise SystemExit(f"{checkpoint}: not a fold ensemble of {len(FOLDS)} folds in fold order (folds {folds}); the "
                         f"release since 2026-12-06 holds two runs per fold, its GPU half alone is `git show "
                         f"0e582be:checkpoints/tumor_seg.safetensors`")
    paths = []
    for k, (state, config, record) in zip(FOLDS, members):
        paths.append(work / "init" / f"{family}_fold{k}.safetensors")
        save_slim(paths[-1], state, config, {"init_from": f"{checkpoint} member {k}", **record})
    return paths


def pack(out: Path, work: Path) -> None:
    for family in ("seg", "dif"):
        gr.pack_weights(out, work, family, {f"{family}_fold{k}.safetensors": work / family / f"fold{k}" / "last.safetensors"
                                           for k in FOLDS})
    gr.pack_logs(out, work, ("*/fold*/metrics.jsonl", "*/fold*/config.yaml", "*/fold*.log", "*.log", "smoke/smoke.json"))


def pack_data(src: Path, dst: Path = Path("gpu_data")) -> None:
    """The tumor data as lossless single-channel WebP (labels as PNG) under the original names, checked equal."""
    import cv2
    import numpy as np
    from PIL import Image

    from diffusion.tasks.tumor.layout import load_tumor_cases

    for f in sorted((src / "tumor-segmentation").glob("*/*/*.png")):
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        image = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        grey = image[..., 0] if image.ndim == 3 else image
        if f.parent.name == "labels":
            out.write_bytes(cv2.imencode(".png", grey, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes())
        else:  # lossless WebP at the slowest, smallest setting (3 % below OpenCV's)
            Image.fromarray(grey).save(out, "WEBP", lossless=True, method=6, quality=100)
    a, b = (load_tumor_cases(r / "tumor-segmentation", include_controls=True, need_truth=True) for r in (src, dst))
    same = a.ids == b.ids and all(np.array_equal(x, y) for x, y in zip([*a.images, *a.labels], [*b.images, *b.labels]))
    if not same:
        raise SystemExit(f"{dst}: the packed data does not read back as {src}")
    log(f"{dst}: {len(a.ids)} cases, read back identical")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack-data", type=Path, metavar="SRC", help="only write gpu_data/ from the data folder SRC")
    p.add_argument("--data-root")
    p.add_argument("--out", help="what comes back (at most 8 files)")
    p.add_argument("--work", default="/tmp/tumor_gpu")
    p.add_argument("--budget", type=float, default=520, help="seconds for everything, packing included")
    p.add_argument("--seg-share", type=float, default=0.6, help="the segmenters' share of the training time")
    p.add_argument("--probe", type=float, default=20, help="seconds of measured steps in the probe")
    p.add_argument("--no-smoke", action="store_true")
    p.add_argument("--smoke-args", default="", help="more eval.gpu_smoke arguments, e.g. --checkpoint ct=PATH when the "
                   "CT release stays behind to keep the tree under the tool's 64 MiB")
    p.add_argument("--init-seg", type=Path, default=None, help="a fold ensemble (eval.crossval --release): fold k's "
                   "segmenter starts from its member k, a fresh schedule on top (the chain is in each run's log)")
    p.add_argument("--init-dif", type=Path, default=None, help="a diffusion fold ensemble: only the diffusion folds "
                   "train, fold k going on from its member k (a fresh schedule; --seg-share and --init-seg unused)")
    p.add_argument("--extra", default="", help="more train_diffusion.py arguments for every run (dry runs)")
    p.add_argument("--batch", type=int, default=32, help="batch per fold (32 in the run of 2026-12-04; the GPU was "
                   "launch-bound there, so a larger batch costs little time per step)")
    args = p.parse_args()
    EXTRA.extend(["--set", f"train.batch_size={args.batch}", *args.extra.split()])
    if args.pack_data:
        pack_data(args.pack_data)
        return 0
    if not (args.data_root and args.out):
        p.error("--data-root and --out are needed (or --pack-data)")
    start = time.time()
    end = start + args.budget - 25  # packing
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    smoke, ok = None, False
    if not args.no_smoke:
        smoke = gr.start_smoke(work, "ct_gpu,tumor_gpu", args.smoke_args)
    try:
        if args.init_dif:  # the diffusion folds only, each going on from its member of a diffusion fold ensemble
            difs = fold_inits(args.init_dif, work, "dif")

            def init(k: int) -> list[str]:
                return [*DIFFUSION, "--init", str(difs[k])]
        else:
            inits = fold_inits(args.init_seg, work) if args.init_seg else None
            seg_init = (lambda k: ["--init", str(inits[k])]) if inits else (lambda k: [])

            def init(k: int) -> list[str]:
                return [*DIFFUSION, "--init", str(work / "seg" / f"fold{k}" / "last.safetensors")]
        runs = {k: work / "probe" / f"fold{k}" for k in FOLDS}
        rate = gr.probe(runs, fold_args(args.data_root, init if args.init_dif else seg_init), args.probe)
        if rate is None:
            return 1
        if not args.init_dif:
            seg_end = time.time() + args.seg_share * (end - time.time())
            seg_runs = {k: work / "seg" / f"fold{k}" for k in FOLDS}
            if not gr.phase("segmenter", seg_runs, gr.steps_until(rate, seg_end, 100),
                            fold_args(args.data_root, seg_init), seg_end):
                return 1
        dif_runs = {k: work / "dif" / f"fold{k}" for k in FOLDS}
        ok = gr.phase("diffusion", dif_runs, gr.steps_until(rate, end, 50), fold_args(args.data_root, init), end)
        return 0 if ok else 1
    finally:
        gr.finish_smoke(smoke, work, start + args.budget - 20, ok)
        pack(out, work)
        log(f"done in {time.time() - start:.0f} s; back: {sorted(f.name for f in out.iterdir())}")

if __name__ == "__main__":
    sys.exit(main())
