#!/usr/bin/env bash
# Issue #27, lever "more steps": a second cosine cycle for each fold's segmenter. In folds 1 and 2 the in-training Dice
# still rose steeply at the last of 1,200 steps (0.562 -> 0.656 and 0.531 -> 0.585 from step 800), so each fold model
# goes on from its 1,200-step weights (runs/tumor_fold<k>/last.safetensors; fresh optimiser, warm-up 50, peak
# learning rate LR, other random draws: seed 1) for STEPS more steps, runs/tumor_fold<k>_more. The lever is judged
# out of fold: `eval.calibrate --split val --cross-fit 5` on the fold's held-out patients, one cycle, two cycles and
# the choice between them made inside the cross-fitting (runs/tumor_fold<k>_more/calibrated.safetensors.threshold.json);
# nothing is chosen on a patient's own score. The start and its continuation averaged:
# runs/tumor_fold<k>_NAME/average.safetensors. Over all five folds: eval.crossval with both checkpoints of each fold.
# The same second stage on whole-width crops (the open question of #13: +0.064 +- 0.038 on validation, -0.018 +- 0.055
# on calibration): NAME=whole EXTRA="--set data.crop_size=400 --set train.batch_size=4" (400 x 400 crops, about the
# pixels of 16 crops of 192 per step).
# NAME (default more: the run folder runs/tumor_fold<k>_NAME), FOLDS (default "1 2"), STEPS (600), LR (2.5e-4),
# PARALLEL (2), THREADS (1), CALIB (1; 0 skips the per-fold calibration run), EXTRA (more --set flags; train.compile
# is ignored since 2026-12-07, compiled training zeroed most gradients), UNTIL=HH:MM; rerun to resume.
# Fold 0's 1,200-step weights are the `all` arm's (tumor_levers.sh).
# Measured 2026-12-07 (NAME=c450 STEPS=450, all five folds, judged by tumor_more_cv.sh; compiled, void): the
# continuations worse out of fold than their starts (0.607 against 0.636). Rerun eagerly (NAME=e450, seventh session):
# better alone (0.651), averaged with their starts 0.656 (+0.020 +- 0.007); inside the release neither pays.
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
. checkpoints/wip/lib.sh
CODE=$(code_snapshot tumor_more_code)
FOLDS=${FOLDS:-1 2}
STEPS=${STEPS:-600}
more() {
  local k=$1 init=runs/tumor_fold$1/last.safetensors out=runs/tumor_fold$1_${NAME:-more} start=()
  [ -f "$init" ] || init=$(cpu_fold "$k")
  [ -f "$init" ] || { echo "fold $k: no 1,200-step weights" >&2; return 0; }
  # a fresh run starts from the fold's weights; a started one resumes (runs/ or its committed slim weights)
  [ -d "$out/checkpoints" ] || [ -f "checkpoints/wip/tumor_fold${k}_${NAME:-more}_last.safetensors" ] || start=(--init "$init")
  train_run configs/tumor_folds_cpu.yaml "$out" "$STEPS" --set data.fold=$k --set seed=1 --set train.lr=${LR:-2.5e-4} \
      --set train.warmup_steps=50 --set train.val_every=200 ${EXTRA:-} "${start[@]}"
  [ -f "$out/checkpoints/step_$(printf %07d "$STEPS").pt" ] || return 0
  # the start and its continuation averaged (a model and its own continuation share a basin: +0.014 on the GPU)
  [ -f "$out/average.safetensors" ] || python -m eval.average --checkpoint "$init" "$out/last.safetensors" \
      --out "$out/average.safetensors" >> "$out.log" 2>&1
  [ "${CALIB:-1}" = 1 ] || return 0
  # one cycle and two, each cross-fitted on its own with the paired difference (cross_fit.per_checkpoint), and the
  # choice between them made inside the cross-fitting (cross_fit.dice)
  OMP_NUM_THREADS=${THREADS:-1} python -m eval.calibrate --checkpoint "$init" "$out/last.safetensors" \
      --data-root ../shared/data --split val --cross-fit 5 --out "$out/calibrated.safetensors" > "$out.calibrate.out" 2>&1
}
running=0
for k in $FOLDS; do
  more "$k" & running=$((running + 1))
  if [ "$running" -ge "${PARALLEL:-2}" ]; then wait -n; running=$((running - 1)); fi
done
wait
