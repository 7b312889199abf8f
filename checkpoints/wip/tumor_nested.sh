#!/usr/bin/env bash
# Issue #27, the lever "folds 1 vs 5" (nnU-Net's fold ensemble against one network on all the training patients),
# measured on patients neither saw: inside fold 0 of the 5-fold split, its 120 training patients dealt into five
# inner folds (`data.inner_folds: 5`); inner model j trains on the other four inner folds' 96 patients (and every
# control) with the fold recipe as written (configs/tumor_folds_cpu.yaml, 1,200 steps fresh: the `all` arm of the
# lever table, which trained on all 120), runs/tumor_nest<j>. Then (stage `eval`) the five joined into one ensemble
# (`python -m eval.join`) and scored against `all` on fold 0's 30 held-out patients in one calibration run
# (`eval.calibrate --split val --cross-fit 5`: same images and seeds, each candidate's threshold and size
# cross-fitted, paired over patients; the five single inner networks scored beside them). Measured 2026-12-07: the
# five joined 0.757 ± 0.033 against `all` 0.740 ± 0.037 (docs/results/tumor_segmentation.md).
# INNER (default "0 1 2 3 4") the inner folds to train, one after the other, THREADS (default 2) threads;
# UNTIL=HH:MM stops by then with a checkpoint; rerun to resume (from runs/, or from the slim weights committed as
# checkpoints/wip/tumor_nest<j>_last.safetensors when runs/ is gone).
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
. checkpoints/wip/lib.sh
THREADS=${THREADS:-2}
INNER=${INNER:-0 1 2 3 4}
weights() {  # weights J: inner model J's slim weights, from runs/ or as committed
  [ -f runs/tumor_nest$1/last.safetensors ] && echo runs/tumor_nest$1/last.safetensors \
      || echo checkpoints/wip/tumor_nest$1_last.safetensors
}
finished() {  # finished J: inner model J has its 1,200 steps (in runs/ or in the committed slim weights)
  [ -f runs/tumor_nest$1/checkpoints/step_0001200.pt ] || python -c "import sys; from diffusion.checkpoint import \
load_slim; sys.exit(load_slim('checkpoints/wip/tumor_nest$1_last.safetensors')[2].get('step') != 1200)" 2>/dev/null
}
if [ "${1:-}" = eval ]; then
  nets=(); for j in 0 1 2 3 4; do finished $j || { echo "inner fold $j not finished" >&2; exit 1; }; nets+=($(weights $j)); done
  python -m eval.join --checkpoint "${nets[@]}" --out runs/tumor_nest_joined.safetensors
  mkdir -p runs/tumor_nest_cmp  # the five single inner networks are candidates too (one network on 96 patients)
  OMP_NUM_THREADS=$THREADS python -m eval.calibrate --checkpoint checkpoints/wip/tumor_lever_all_last.safetensors \
      runs/tumor_nest_joined.safetensors "${nets[@]}" --data-root ../shared/data --split val --cross-fit 5 \
      --out runs/tumor_nest_cmp/calibrated.safetensors > runs/tumor_nest_cmp.json
  exit 0
fi
CODE=$(code_snapshot tumor_nested_code)
mkdir -p runs
for j in $INNER; do
  finished $j && continue
  train_run configs/tumor_folds_cpu.yaml runs/tumor_nest$j 1200 --set data.fold=0 --set data.inner_folds=5 \
      --set data.inner_fold=$j
done
