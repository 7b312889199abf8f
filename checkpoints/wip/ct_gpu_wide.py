"""Issue #28.4 on one lent GPU, inside a fixed time budget: capacity trained fresh, for both objectives, at equal
steps. Three runs side by side on whole 256x256 slices (the lesson of #14.3: train on the inference geometry), the
10 calibration patients of the releases held out, the GPU smoke check beside the first minutes:

    reg_small  the release's network (6.4M parameters: blocks 16-64-128-192), L1 regressor
    reg_wide   configs/ct_gpu.yaml's network (10.7M: 32-64-128-256, self-attention at the deepest level), regressor
    dif_wide   the same wide network with the diffusion objective of ct_inpaint_diffusion (x0 prediction, L1 on the
               x0 estimate, timesteps t = T u^0.15)

reg_small against reg_wide separates capacity from the GPU's many more passes over the data; reg_wide against
dif_wide is the equal-compute table at the new size. Nothing is chosen here: the slim weights come back and the
calibration patients choose on the CPU (`eval.compare --split calib`), then all 530 validation slices report.

The CT data does not fit the device tool's 64 MiB in one call (the ground truth alone is 66 MB however it is
compressed losslessly), so it travels in two halves, in two calls back to back while the machine is warm (30 s):

    python checkpoints/wip/ct_gpu_wide.py --pack-data ../shared/data   # here: gpu_ct_a/ and gpu_ct_b/, 34 MB each
    # move every *.safetensors out of checkpoints/ and checkpoints/wip/ (the tree travels; the smoke check reads the
    # models its own training rows write), then through the device tool:
    #   call 1, carry ["gpu_ct_a"]:          mkdir -p /tmp/ct_parts && cp -r gpu_ct_a /tmp/ct_parts/
    #   call 2, carry [".whl", "gpu_ct_b"]:  (the diffusers wheel and its missing needs, ../.library/device/README.md)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
    PYTHONUNBUFFERED=1 python3 checkpoints/wip/ct_gpu_wide.py --parts /tmp/ct_parts/gpu_ct_a gpu_ct_b \\
        --out $OUT --budget 540 2>&1 | tee $OUT/run.log
    # back here: cat reg.tar.part* | tar -x (and the same for the others), then eval.compare on the calibration split

Each half holds whole patients (every other patient in id order): the ground truth, mask and tissue map as
LZMA-compressed uint8 stacks and the vertebra levels; `--parts` writes them back as the competition's layout, the
corrupted slice rebuilt from the truth and the mask (DATA.md: exactly `ct` where the mask is 0, 0 where it is 255;
checked against the real files when packing, with every array read back identical through the repository's loader).
"""
from __future__ import annotations

import argparse
import json
import lzma
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import gpu_runner as gr
import numpy as np
from gpu_runner import log

PARTS = ("gpu_ct_a", "gpu_ct_b")
FIELDS = ("ct", "mask", "tissue")
EXTRA: list[str] = []  # --extra: appended to every training command (a dry run on the CPU with a tiny model)
COMMON = ["--config", "configs/ct_gpu.yaml", "--set", "data.calib_patients=10", "--set", "train.val_slices=40",
          "--set", "train.warmup_steps=200", "--set", "train.ema_decay=0.999", "--set", "train.log_every=10",
          "--set", "train.num_workers=4", "--set", "sample.ensemble=1", "--set", "sample.flip=false"]
REGRESS = ["--set", "diffusion.objective=regress", "--set", "sample.sampler=regressor"]
ARMS = {
    "reg_small": [*REGRESS, "--set", "model.block_out_channels=[16,64,128,192]", "--set", "model.attention_levels=[]",
                  "--set", "model.norm_num_groups=16"],
    "reg_wide": REGRESS,
    "dif_wide": ["--set", "diffusion.timestep_power=0.15", "--set", "sample.sampler=ddim", "--set", "sample.steps=1"],
}


# --- the data in two halves ------------------------------------------------------------------------------------
def pack_data(src: Path) -> None:
    """`src`/ct-inpainting as two halves of whole patients (gpu_ct_a/, gpu_ct_b/), checked to read back identical."""
    import tempfile

    from diffusion.tasks.ct.layout import list_ct_ids, load_ct_slices

    root = src / "ct-inpainting"
    ids = list_ct_ids(root)
    patients = sorted({i.split("_")[0] for i in ids})
    for h, part in enumerate(PARTS):
        mine = set(patients[h::2])
        half = [i for i in ids if i.split("_")[0] in mine]
        data = load_ct_slices(root, ids=half, need_truth=True)
        rebuilt = np.where(data.missing_mask > 0, 0, data.ct)
        if not np.array_equal(rebuilt, data.corrupted):
            raise SystemExit(f"{root}: a corrupted slice is not the truth with the masked pixels set to 0")
        out = Path(part)
        out.mkdir(exist_ok=True)
        for field, array in (("ct", data.ct), ("mask", data.missing_mask), ("tissue", data.tissue)):
            (out / f"{field}.u8.xz").write_bytes(lzma.compress(np.ascontiguousarray(array, np.uint8).tobytes(), preset=9))
        (out / "slices.json").write_text(json.dumps({"ids": half, "vertebra": data.vertebra.tolist()}))
        log(f"{out}: {len(half)} slices of {len(mine)} patients, "
            f"{sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        back = unpack_data([Path(p) for p in PARTS], Path(tmp))
        a, b = (load_ct_slices(r, ids=ids, need_truth=True, progress=False) for r in (root, back))
        same = all(np.array_equal(getattr(a, k), getattr(b, k))
                   for k in ("ct", "corrupted", "missing_mask", "tissue", "vertebra"))
        if not same:
            raise SystemExit("the packed halves do not read back as the data")
    log(f"{len(ids)} slices read back identical")


def _write_slice(args) -> None:
    import cv2

    root, sid, ct, mask, tissue, vertebra = args
    level = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    cv2.imwrite(str(root / "ct" / f"ct_{sid}.png"), ct, level)
    cv2.imwrite(str(root / "mask" / f"mask_{sid}.png"), mask * 255, level)
    cv2.imwrite(str(root / "tissue" / f"tissue_{sid}.png"), tissue, level)
    cv2.imwrite(str(root / "corrupted" / f"corrupted_{sid}.png"), np.where(mask > 0, 0, ct).astype(np.uint8), level)
    (root / "vertebrae" / f"vertebrae_{sid}.txt").write_text(f"{vertebra}\n")


def unpack_data(parts: list[Path], dst: Path) -> Path:
    """The halves written back as `dst`/ct-inpainting in the competition's layout; returns that folder."""
    root = dst / "ct-inpainting"
    for folder in ("ct", "mask", "tissue", "corrupted", "vertebrae"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    jobs = []
    for part in parts:
        meta = json.loads((part / "slices.json").read_text())
        n = len(meta["ids"])
        arrays = {f: np.frombuffer(lzma.decompress((part / f"{f}.u8.xz").read_bytes()), np.uint8).reshape(n, 256, 256)
                  for f in FIELDS}
        jobs += [(root, sid, arrays["ct"][i], arrays["mask"][i], arrays["tissue"][i], meta["vertebra"][i])
                 for i, sid in enumerate(meta["ids"])]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_slice, jobs, chunksize=64))
    return root


# --- the runs --------------------------------------------------------------------------------------------------
def arm_args(data_root: str, batch: int) -> gr.ArgsOf:
    return lambda arm: [*COMMON, "--data-root", data_root, "--set", f"train.batch_size={batch}", *ARMS[arm], *EXTRA]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack-data", type=Path, metavar="SRC", help="only write gpu_ct_a/ and gpu_ct_b/ from SRC")
    p.add_argument("--parts", type=Path, nargs="+", help="the packed halves (both are needed: the split is by patient "
                   "over all of them)")
    p.add_argument("--data-root", help="instead of --parts: a data folder in the competition's layout (dry runs)")
    p.add_argument("--out", help="what comes back (at most 8 files)")
    p.add_argument("--work", default="/tmp/ct_gpu")
    p.add_argument("--budget", type=float, default=540, help="seconds for everything, unpacking and packing included")
    p.add_argument("--probe", type=float, default=20, help="seconds of measured steps in the probe")
    p.add_argument("--batch", type=int, default=32, help="whole slices per step and run")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated, of " + ", ".join(ARMS))
    p.add_argument("--no-smoke", action="store_true")
    p.add_argument("--extra", default="", help="more train_diffusion.py arguments for every run (dry runs)")
    args = p.parse_args()
    if args.pack_data:
        pack_data(args.pack_data)
        return 0
    if not ((args.parts or args.data_root) and args.out):
        p.error("--parts (or --data-root) and --out are needed (or --pack-data)")
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        p.error(f"unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARMS)}")
    EXTRA.extend(args.extra.split())
    start = time.time()
    end = start + args.budget - 25  # packing
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if args.parts:
        missing = [str(part) for part in args.parts if not (part / "slices.json").is_file()]
        if missing or len(args.parts) != len(PARTS):
            log(f"--parts: need both halves; missing {missing or 'one'} (the first call's half is gone when the "
                f"machine was not warm: send it again)")
            return 1
        data_root = str(unpack_data(args.parts, work / "data").parent)
        log(f"data unpacked in {time.time() - start:.0f} s")
    else:
        data_root = args.data_root
    smoke, ok = None, False
    if not args.no_smoke:  # its infer and serve rows read the models its own training rows write
        smoke = gr.start_smoke(work, "ct_gpu,tumor_gpu", " ".join(
            f"--checkpoint {t}={work}/smoke/train_{t}_gpu_eager/last.safetensors" for t in ("ct", "tumor")))
    try:
        rate = gr.probe({a: work / "probe" / a for a in arms}, arm_args(data_root, args.batch), args.probe)
        if rate is None:
            return 1
        runs = {a: work / a for a in arms}
        ok = gr.phase("arms", runs, gr.steps_until(rate, end, 100), arm_args(data_root, args.batch), end)
        return 0 if ok else 1
    finally:
        gr.finish_smoke(smoke, work, start + args.budget - 20, ok)
        for arm in arms:
            gr.pack_weights(out, work, arm, {f"{arm}.safetensors": work / arm / "last.safetensors"})
        gr.pack_logs(out, work, ("*/metrics.jsonl", "*/config.yaml", "*.log", "probe/*.log", "smoke/smoke.json"))
        log(f"done in {time.time() - start:.0f} s; back: {sorted(f.name for f in out.iterdir())}")


if __name__ == "__main__":
    sys.exit(main())
