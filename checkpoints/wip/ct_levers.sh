#!/usr/bin/env bash
# Issue 14.3, two arms at equal compute from the release (checkpoints/ct_inpaint.safetensors, the regressor at equal
# compute), one thread each, side by side: the release continued on 128 crops (batch 16), and a final stage on whole
# 256x256 slices (batch 4: the same pixels per step). Both: the release's regressor recipe on a fresh 1,000-step
# cosine at half its stage-b learning rate (1e-4), 10 training patients held out as calibration patients (in-training
# validation there, never on the 53 validation patients); no checkpoint is chosen (last.safetensors is compared).
# Then: python -m eval.compare --task ct --split calib ... to choose the arm, --split val to report it against the
# release side by side.
# UNTIL=HH:MM stops both by then (with a checkpoint); resumable: rerun (from runs/, or, when runs/ is gone, from the
# slim weights committed as checkpoints/wip/<arm>_last.safetensors).
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
CODE=/tmp/ct_levers_code
[ -d $CODE ] || { mkdir -p $CODE && git archive HEAD | tar -x -C $CODE; }
maxmin=()
if [ -n "${UNTIL:-}" ]; then  # a clock time; one already past today means tomorrow
  stop=$(date -d "$UNTIL" +%s); [ "$stop" -gt "$(date +%s)" ] || stop=$(date -d "tomorrow $UNTIL" +%s)
  maxmin=(--max-minutes $(( (stop - $(date +%s)) / 60 )))
fi
arm() {  # arm OUT [--set ...]
  local out=$1; shift
  local resume=() init=checkpoints/ct_inpaint.safetensors wip=checkpoints/wip/$(basename "$out")_last.safetensors
  if ls "$out"/checkpoints/step_*.pt >/dev/null 2>&1; then resume=(--resume latest)
  elif [ -f "$wip" ]; then init=$wip; resume=(--continue-schedule)  # runs/ is gone: go on from the committed slim weights
  fi
  OMP_NUM_THREADS=1 python $CODE/train_diffusion.py --config configs/ct_regress_cpu.yaml --out "$out" \
      --init "$init" --data-root ../shared/data \
      --set data.calib_patients=10 --set train.lr=1e-4 --set train.warmup_steps=20 --set train.max_steps=1000 \
      --set train.val_every=250 --set train.val_slices=40 "${maxmin[@]}" "${resume[@]}" "$@" >> "$out.log" 2>&1
}
arm runs/ct_reg_crops &
arm runs/ct_reg_whole --set data.crop_size=256 --set train.batch_size=4 &
wait
