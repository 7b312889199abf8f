#!/usr/bin/env bash
# Issue #27: the 5-fold cross-validation and the fold-ensemble releases, one command, resumable.
#   1. the segmenter on each fold (configs/tumor_folds_cpu.yaml, fresh, 1,200 steps; LEVERS: the --set flags of the
#      levers the lever table keeps, e.g. LEVERS="--set data.rotate=0"), runs/tumor_fold<k>;
#   2. the diffusion segmenter on each fold, warm-started from that fold's segmenter (bce_dice on the x0 estimate,
#      timesteps biased to high noise, DDIM-2 with one member per fold: 5 folds x 2 evaluations = 10 per image, as
#      many as the segmenters' ensemble of 5 flip pairs; with a flip pair each (20 evaluations) the p95 was 9.6 s of the
#      10 s budget, measured on 30 images uncontended on a 2-core AMD EPYC), 600 steps, runs/tumor_dfold<k>;
#   3. eval.crossval for each family: the cross-validated Dice (settings chosen out of fold) and the fold ensemble
#      as one checkpoint (runs/tumor_seg_folds.safetensors, runs/tumor_seg_diffusion_folds.safetensors).
# STAGES (default "seg dif cv") picks the steps above; FOLDS (default "0 1 2 3 4"), PARALLEL (default 2) folds side by side, THREADS (default 1) threads each;
# RUN (default tumor_fold) names the segmenter runs runs/<RUN><k> (the diffusion runs: "fold" -> "dfold" in RUN), so a
# further run of the folds with other levers or seed is e.g. RUN=tumor_geo_fold LEVERS="--set data.synthetic_fraction=0";
# UNTIL=HH:MM stops by then with a checkpoint; rerun to resume (from runs/, or from the slim weights committed as
# checkpoints/wip/<run>_last.safetensors when runs/ is gone).
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
. checkpoints/wip/lib.sh
CODE=$(code_snapshot tumor_folds_code)
FOLDS=${FOLDS:-0 1 2 3 4}
RUN=${RUN:-tumor_fold}
DRUN=${RUN/fold/dfold}
NAME=${RUN%_fold}  # the cross-validation's outputs: runs/<NAME>_cv, runs/<NAME>_seg_folds.safetensors, ...
train() { train_run configs/tumor_folds_cpu.yaml "$@"; }  # train OUT STEPS [args...]: resumed if it was started
segmenter() { train runs/$RUN$1 1200 --set data.fold=$1 ${LEVERS:-}; }
diffusion() {  # only from a finished segmenter (a run stopped by UNTIL goes on next time)
  [ -f "runs/$RUN$1/checkpoints/step_0001200.pt" ] || { echo "fold $1: segmenter not finished" >&2; return 0; }
  local init=runs/$RUN$1/last.safetensors
  [ -f "$init" ] || init=checkpoints/wip/$RUN$1_last.safetensors
  train runs/$DRUN$1 600 --set data.fold=$1 ${LEVERS:-} --init "$init" --set diffusion.objective=diffusion \
      --set diffusion.timestep_power=0.3 --set train.lr=2e-4 --set train.warmup_steps=50 --set sample.sampler=ddim \
      --set sample.steps=2 --set sample.ensemble=1 --set sample.flip=false
}
mkdir -p runs
STAGES=${STAGES:-seg dif cv}
[[ " $STAGES " == *" seg "* ]] && in_parallel segmenter
[[ " $STAGES " == *" dif "* ]] && in_parallel diffusion
[[ " $STAGES " == *" cv "* ]] || exit 0
[ "$FOLDS" = "0 1 2 3 4" ] || { echo "cross-validation needs all five folds (FOLDS=$FOLDS)" >&2; exit 0; }
done_all() { for k in $FOLDS; do [ -f "runs/$1$k/checkpoints/step_$(printf %07d "$2").pt" ] || return 1; done; }
if done_all "$RUN" 1200; then
  python -m eval.crossval --checkpoint $(for k in $FOLDS; do echo runs/$RUN$k/last.safetensors; done) \
      --data-root ../shared/data --out runs/${NAME}_cv --release runs/${NAME}_seg_folds.safetensors
fi
if done_all "$DRUN" 600; then
  python -m eval.crossval --checkpoint $(for k in $FOLDS; do echo runs/$DRUN$k/last.safetensors; done) \
      --data-root ../shared/data --out runs/${NAME}_dcv --release runs/${NAME}_seg_diffusion_folds.safetensors
fi
