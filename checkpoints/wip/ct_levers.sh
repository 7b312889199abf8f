#!/usr/bin/env bash
# Issue 14.3, two arms at equal compute from the release (checkpoints/ct_inpaint_diffusion.safetensors), one thread each, side by
# side: the release continued on 128 crops (batch 16), and a final stage on whole 256x256 slices (batch 4: the same
# pixels per step). Both: the release's stage-3 recipe (timestep_power 0.15) at a lower learning rate, 10 training
# patients held out as calibration patients (in-training validation and the checkpoint choice there, never on the
# 53 validation patients). Then: python -m eval.compare --task ct --split calib ... to choose, --split val to report.
# UNTIL=HH:MM stops both by then (with a checkpoint); resumable: rerun (from runs/, or, when runs/ is gone, from the
# slim weights committed as checkpoints/wip/<arm>_last.safetensors).
set -e
cd /work/main && . .venv/bin/activate
CODE=/tmp/ct_levers_code
[ -d $CODE ] || { mkdir -p $CODE && git archive HEAD | tar -x -C $CODE; }
maxmin=()
[ -z "${UNTIL:-}" ] || maxmin=(--max-minutes $(( ($(date -d "$UNTIL" +%s) - $(date +%s)) / 60 )))
arm() {  # arm OUT [--set ...]
  local out=$1; shift
  local resume=() init=checkpoints/ct_inpaint_diffusion.safetensors wip=checkpoints/wip/$(basename "$out")_last.safetensors
  if ls "$out"/checkpoints/step_*.pt >/dev/null 2>&1; then resume=(--resume latest)
  elif [ -f "$wip" ]; then init=$wip; resume=(--continue-schedule)  # runs/ is gone: go on from the committed slim weights
  fi
  OMP_NUM_THREADS=1 python $CODE/train_diffusion.py --config configs/ct_cpu.yaml --out "$out" \
      --init "$init" --data-root ../shared/data --set diffusion.timestep_power=0.15 \
      --set data.calib_patients=10 --set train.lr=1e-4 --set train.warmup_steps=20 --set train.max_steps=600 \
      --set train.val_every=200 --set train.val_slices=40 "${maxmin[@]}" "${resume[@]}" "$@" >> "$out.log" 2>&1
}
arm runs/ct_arm_crops &
arm runs/ct_arm_whole --set data.crop_size=256 --set train.batch_size=4 &
wait
