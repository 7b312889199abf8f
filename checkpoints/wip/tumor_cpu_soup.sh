#!/usr/bin/env bash
# Issue #27, lever "average a model with its own continuation", on the CPU. On the GPU, each fold's segmenter averaged
# with its own continuation (run 1 + run 2, `eval.average`) gained +0.014 +- 0.007 out of fold, more than the
# continuation alone (+0.005): one basin, two points. Here each fold's member of the segmenter release (itself such an
# average, trained only on the fold's training patients) goes on for STEPS steps of batch 16 (a fresh cosine from LR,
# warm-up 30, other random draws: seed 2) -> runs/tumor_soup<k>/seg, and is averaged with its start ->
# runs/tumor_soup<k>/avg.safetensors. Judged out of fold by one eval.crossval run with three candidates per fold
# (release, continuation, average; chosen inside the cross-fitting, like the GPU runs), which writes the fold ensemble
# of the chosen candidates. Nothing is chosen on a patient's own score.
# STEPS (300), LR (5e-4), FOLDS ("0 1 2 3 4"), THREADS (2), EXTRA (more --set flags), UNTIL=HH:MM;
# rerun to resume; STAGES (train cv).
# Measured 2026-12-06 (docs/results/tumor_segmentation.md): continuation 0.622, average 0.660, release 0.684 out of
# fold: at batch 16 the peak lr 5e-4 throws the GPU-trained folds out of their basin; try LR=1e-4 next.
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
. checkpoints/wip/lib.sh
CODE=$(code_snapshot tumor_soup_code)
FOLDS=${FOLDS:-0 1 2 3 4}
STEPS=${STEPS:-300}
RELEASE=checkpoints/tumor_seg.safetensors
export THREADS=${THREADS:-2}
if [[ " ${STAGES:-train cv} " == *" train "* ]]; then
  for k in $FOLDS; do
    w=runs/tumor_soup$k
    [ -f "$w/init/seg_fold$k.safetensors" ] || (cd checkpoints/wip && python -c "import tumor_gpu_folds as t; from pathlib import Path; t.fold_inits(Path('../../$RELEASE'), Path('../../$w'), 'seg')")
    start=(); [ -d "$w/seg/checkpoints" ] || start=(--init "$w/init/seg_fold$k.safetensors")
    train_run configs/tumor_folds_cpu.yaml "$w/seg" "$STEPS" --set data.fold=$k --set seed=2 --set train.lr=${LR:-5e-4} \
        --set train.warmup_steps=30 --set train.val_every=100000 ${EXTRA:-} "${start[@]}"
    [ -f "$w/seg/checkpoints/step_$(printf %07d "$STEPS").pt" ] || exit 0  # stopped by UNTIL: rerun to resume
    python -m eval.average --checkpoint "$w/init/seg_fold$k.safetensors" "$w/seg/last.safetensors" \
        --out "$w/avg.safetensors" >> "$w.log" 2>&1
  done
fi
if [[ " ${STAGES:-train cv} " == *" cv "* ]]; then
  OMP_NUM_THREADS=$THREADS python -m eval.crossval --checkpoint $RELEASE \
      $(for k in 0 1 2 3 4; do echo runs/tumor_soup$k/seg/last.safetensors; done) \
      $(for k in 0 1 2 3 4; do echo runs/tumor_soup$k/avg.safetensors; done) \
      --data-root ../shared/data --out runs/tumor_cv_soup --release runs/tumor_seg_soup.safetensors > runs/tumor_cv_soup.log 2>&1
fi
