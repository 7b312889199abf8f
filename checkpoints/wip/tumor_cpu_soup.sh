#!/usr/bin/env bash
# Issue #27, lever "average a model with its own continuation", on the CPU. On the GPU, each fold's segmenter averaged
# with its own continuation (run 1 + run 2, `eval.average`) gained +0.014 +- 0.007 out of fold, more than the
# continuation alone (+0.005): one basin, two points. Here each fold's member of the segmenter release (itself such an
# average, trained only on the fold's training patients) goes on for STEPS steps of batch 16 (a fresh cosine from LR,
# warm-up 30, other random draws: seed 2) -> runs/tumor_soup<k>/seg, and is averaged with its start ->
# runs/tumor_soup<k>/avg.safetensors. Judged out of fold by one eval.crossval run with three candidates per fold
# (release, continuation, average; chosen inside the cross-fitting, like the GPU runs), which writes the fold ensemble
# of the chosen candidates. Nothing is chosen on a patient's own score.
# STEPS (300), LR (1e-4), NAME (soup), RELEASE, FOLDS ("0 1 2 3 4"), THREADS (2), EXTRA (more --set flags), UNTIL=HH:MM;
# rerun to resume; STAGES (train cv).
# Measured 2026-12-06 (docs/results/tumor_segmentation.md): continuation 0.622, average 0.660, release 0.684 out of
# fold: at batch 16 the peak lr 5e-4 throws the GPU-trained folds out of their basin; try LR=1e-4 next. That run was
# compiled (void: compiled training zeroed most gradients); rerun eagerly on 2026-12-08 with LR 1e-4 (now the default;
# NAME=esoup): the continuation -0.034 +- 0.012 alone, the average -0.018 +- 0.008 alone and +0.000 +- 0.004 inside the
# release (0.700); not kept.
# Since 2026-12-06 the release holds two networks per fold (GPU + CPU): RELEASE (default: its GPU half, the release of
# 2026-12-04, git show 0e582be) is what is continued, and the cv stage judges each candidate GPU half inside today's
# release (joined with the CPU half, cut at 30 % of the peak uptake, the release's default) and alone; NAME (soup)
# names the runs runs/tumor_<NAME><k> and the report runs/tumor_cv_<NAME>.
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
. checkpoints/wip/lib.sh
CODE=$(code_snapshot tumor_soup_code)
FOLDS=${FOLDS:-0 1 2 3 4}
STEPS=${STEPS:-300}
NAME=${NAME:-soup}
RELEASE=$(realpath "${RELEASE:-$(git_file 0e582be checkpoints/tumor_seg.safetensors tumor_seg_20261204.safetensors)}")
export THREADS=${THREADS:-2}
if [[ " ${STAGES:-train cv} " == *" train "* ]]; then
  for k in $FOLDS; do
    w=runs/tumor_$NAME$k
    [ -f "$w/init/seg_fold$k.safetensors" ] || (cd checkpoints/wip && python -c "import tumor_gpu_folds as t; from pathlib import Path; t.fold_inits(Path('$RELEASE'), Path('../../$w'), 'seg')")
    start=(); [ -d "$w/seg/checkpoints" ] || start=(--init "$w/init/seg_fold$k.safetensors")
    train_run configs/tumor_folds_cpu.yaml "$w/seg" "$STEPS" --set data.fold=$k --set seed=2 --set train.lr=${LR:-1e-4} \
        --set train.warmup_steps=30 --set train.val_every=100000 ${EXTRA:-} "${start[@]}"
    [ -f "$w/seg/checkpoints/step_$(printf %07d "$STEPS").pt" ] || exit 0  # stopped by UNTIL: rerun to resume
    python -m eval.average --checkpoint "$w/init/seg_fold$k.safetensors" "$w/seg/last.safetensors" \
        --out "$w/avg.safetensors" >> "$w.log" 2>&1
  done
fi
if [[ " ${STAGES:-train cv} " == *" cv "* ]]; then
  for k in 0 1 2 3 4; do [ -f "runs/tumor_$NAME$k/avg.safetensors" ] || { echo "fold $k not finished" >&2; exit 0; }; done
  gpu() { for k in 0 1 2 3 4; do echo "runs/tumor_$NAME$k/$1"; done; }  # init/seg_fold<k>, seg/last, avg
  cpu() { for k in 0 1 2 3 4; do cpu_fold $k; done; }  # the release's CPU half
  plus() { tr '\n' + | sed 's/+$//'; }
  gpu_init() { for k in 0 1 2 3 4; do echo "runs/tumor_$NAME$k/init/seg_fold$k.safetensors"; done; }
  cut=@uptake_fraction=0.3
  OMP_NUM_THREADS=$THREADS python -m eval.crossval \
      --checkpoint "$( (gpu_init; cpu) | plus)$cut" "$( (gpu seg/last.safetensors; cpu) | plus)$cut" \
      "$( (gpu avg.safetensors; cpu) | plus)$cut" $(gpu_init | sed "s/$/$cut/") \
      $(gpu seg/last.safetensors | sed "s/$/$cut/") $(gpu avg.safetensors | sed "s/$/$cut/") \
      --data-root ../shared/data --out runs/tumor_cv_$NAME --release runs/tumor_seg_$NAME.safetensors \
      > runs/tumor_cv_$NAME.log 2>&1
fi
