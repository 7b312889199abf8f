#!/usr/bin/env bash
# Issue #27.5, parity for the diffusion segmenter: the segmenter release holds two networks per fold (the GPU fold
# model and the CPU-trained run of 2026-12-03), the diffusion release one (a 100-step diffusion stage from each GPU
# fold model). This gives the diffusion segmenter its second run the same way: a 100-step diffusion stage (x_t weights
# zeroed at the warm start, as the release's) from each fold's CPU-trained segmenter, then one eval.crossval run,
# same patients and seeds, the choice made inside the folds:
#   0 the diffusion release (5 networks, DDIM-1 x 4 each: 20 evaluations)
#   1 joined with the new networks at the same 20 evaluations (10 networks x 2)
# STAGES (default "train eval"), FOLDS (default 0-4), THREADS (default 2). Trains from the committed code (frozen).
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
. checkpoints/wip/lib.sh
STAGES=${STAGES:-train eval}; FOLDS=${FOLDS:-0 1 2 3 4}
if [[ " $STAGES " == *" train "* ]]; then
  CODE=$(code_snapshot tumor_dif_runs_code)
  for k in $FOLDS; do
    out=runs/tumor_dwarm_cpu$k
    [ -f "$out/last.safetensors" ] && continue
    OMP_NUM_THREADS=${THREADS:-2} python "$CODE"/train_diffusion.py --config configs/tumor_folds_cpu.yaml \
        --data-root ../shared/data --out "$out" --init "$(cpu_fold $k)" --set data.fold=$k \
        --set diffusion.objective=diffusion --set diffusion.timestep_power=0.3 --set train.lr=5e-5 \
        --set train.warmup_steps=10 --set sample.sampler=ddim --set sample.steps=1 --set sample.ensemble=1 \
        --set sample.flip=false --set train.batch_size=16 --set train.max_steps=100 --set train.val_every=100000 \
        >> "$out.log" 2>&1
  done
fi
if [[ " $STAGES " == *" eval "* ]]; then
  REL=checkpoints/tumor_seg_diffusion.safetensors; NEW=$REL
  for k in 0 1 2 3 4; do NEW=$NEW+runs/tumor_dwarm_cpu$k/last.safetensors; done
  OMP_NUM_THREADS=${THREADS:-2} python -m eval.crossval --checkpoint $REL "$NEW@steps=1,ensemble=2" \
      --data-root ../shared/data --out runs/tumor_dcv_runs \
      --release runs/tumor_seg_diffusion_runs.safetensors > runs/tumor_dcv_runs.log 2>&1
fi
