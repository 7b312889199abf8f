#!/usr/bin/env bash
# The CT release (checkpoints/ct_inpaint.safetensors, model card checkpoints/ct_inpaint.md). Issue 14.1 (the release
# of 2026-12-01): the regressor baseline (checkpoints/ct_inpaint_regressor.safetensors, 2,900 steps) continued for the diffusion
# stage's 3,629 steps, same schedule and crops:
# stage a = 640 steps (cosine, lr 2e-4); stage b = the 3,200-step cosine schedule stopped at step 2,989, as the
# release's stage 3 was. No checkpoint is chosen: last.safetensors of stage b is what is compared.
# MAXMIN=N stops each stage after N minutes (with a checkpoint); UNTIL=HH:MM (today) stops the whole recipe by then. Resumable: rerun the script; a finished stage is skipped, an interrupted one goes on from its latest state.
set -e
cd "$(dirname "$0")/.." && . .venv/bin/activate
CODE=/tmp/regress_code   # a copy of the code, so that edits in the work tree do not reach a running job
[ -d $CODE ] || { mkdir -p $CODE && git archive HEAD | tar -x -C $CODE; }
stage() {  # stage OUT INIT MAX_STEPS VAL_EVERY STOP
  local out=$1 init=$2 steps=$3 every=$4 stop=$5
  if [ -f "$out/checkpoints/step_$(printf %07d "$stop").pt" ]; then return; fi
  local maxmin=${MAXMIN:-}
  if [ -n "${UNTIL:-}" ]; then
    local left=$(( ($(date -d "$UNTIL" +%s) - $(date +%s)) / 60 ))
    [ "$left" -ge 5 ] || { echo "past UNTIL=$UNTIL: stopping before $out"; exit 0; }
    if [ -z "$maxmin" ] || [ "$left" -lt "$maxmin" ]; then maxmin=$left; fi
  fi
  local resume=() wip=checkpoints/wip/$(basename "$out")_last.safetensors
  if ls "$out"/checkpoints/step_*.pt >/dev/null 2>&1; then resume=(--resume latest)
  elif [ -f "$wip" ]; then init=$wip; resume=(--continue-schedule)  # runs/ is gone: go on from the committed slim weights
  fi
  python $CODE/train_diffusion.py --config configs/ct_regress_cpu.yaml --out "$out" --init "$init" \
      --data-root ../shared/data --set train.lr=2e-4 --set train.warmup_steps=20 --set train.max_steps="$steps" \
      --set train.val_every="$every" --max-steps "$stop" ${maxmin:+--max-minutes $maxmin} "${resume[@]}"
  [ -f "$out/checkpoints/step_$(printf %07d "$stop").pt" ] || { echo "$out stopped before step $stop: rerun"; exit 0; }
}
[ -f runs/ct_regress_eq_b/checkpoints/step_0002989.pt ] ||  # stage a is needed only before stage b
  stage runs/ct_regress_eq_a checkpoints/ct_inpaint_regressor.safetensors 640 160 640
stage runs/ct_regress_eq_b runs/ct_regress_eq_a/last.safetensors 3200 400 2989
# Issue 14.1's table: one harness, all 530 validation slices, then the 106-slice subset (same per-case seeds, so the
# same predictions): the release's default against the regressor at 2,900 steps and at equal compute (6,529 steps).
for LIMIT in 0 106; do
  python -m eval.compare --task ct --split val --data-root ../shared/data $([ $LIMIT = 0 ] || echo --limit $LIMIT) \
      --out runs/compare_ct_equal_$LIMIT \
      --variant "name=diffusion warm-started (the release until 2026-12-01; 2900+3629 steps; DDIM-1 x 8 with flips),checkpoint=$(. checkpoints/wip/lib.sh && diffusion_20261201)" \
      --variant "name=regressor (2900 steps; flip pair),checkpoint=checkpoints/ct_inpaint_regressor.safetensors,sampler=regressor:1,ensemble=2,flip=1" \
      --variant "name=regressor at equal compute (2900+3629 steps; flip pair),checkpoint=runs/ct_regress_eq_b/last.safetensors,sampler=regressor:1,ensemble=2,flip=1" \
      --variant "name=regressor at equal compute (one pass),checkpoint=runs/ct_regress_eq_b/last.safetensors,sampler=regressor:1,ensemble=1,flip=0" \
      > runs/compare_ct_equal_$LIMIT.log 2>&1
done
# Stage c (issue 14.3, the release since 2026-12-02): 1,000 steps on whole 256x256 slices from stage b's weights, 10
# calibration patients held out; checkpoints/wip/ct_levers.sh runs it (and, with ARMS="crops whole attn", the other
# two levers), checkpoints/wip/ct_levers_eval.sh chooses on the calibration patients and scores on validation.
BASE=runs/ct_regress_eq_b/last.safetensors ARMS=${ARMS:-whole} bash checkpoints/wip/ct_levers.sh
[ -f runs/ct_reg_whole/checkpoints/step_0001000.pt ] || { echo "runs/ct_reg_whole stopped before step 1000: rerun"; exit 0; }
# Stage d (issue 14.3, arm "more", the release since 2026-12-02 evening): 3,000 more steps on whole slices from stage
# c's last weights, cosine from lr 5e-5, the same 10 calibration patients held out (= `ARMS=more bash
# checkpoints/wip/ct_levers.sh`, which starts from the stage c release extracted from git unless MORE_BASE is given).
MORE_BASE=runs/ct_reg_whole/last.safetensors ARMS=more bash checkpoints/wip/ct_levers.sh
[ -f runs/ct_reg_more/checkpoints/step_0003000.pt ] || { echo "runs/ct_reg_more stopped before step 3000: rerun"; exit 0; }
# The release: stage d's last weights with the flip pair as the default setting (what the tables scored).
python -m eval.release --checkpoint runs/ct_reg_more/last.safetensors --out checkpoints/ct_inpaint.safetensors \
    --set sample.ensemble=2 --set sample.flip=true
