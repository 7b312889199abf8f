#!/usr/bin/env bash
# Issue #27, the levers one at a time, on fold 0 of the 5-fold split (configs/tumor_folds_cpu.yaml), trained fresh
# for the same 1,200 steps, side by side (THREADS threads each, default 1):
#   base  today's segmenter recipe (no synthetic tumors, no zoom or rotation)
#   synth + synthetic tumors pasted into a quarter of the items (data.synthetic_fraction 0.25)
#   geo   + zoom 0.8-1.25 and rotations up to 10 degrees
#   all   both (the fold config as written)
#   wide  all, with a wider and deeper network (32-256 channels, 2 layers per block), for base's wall time
#         (--max-minutes of the base arm's run; its step count is reported)
# Then each arm's threshold and component size are cross-fitted on fold 0's 30 held-out patients
# (`eval.calibrate --split val --cross-fit 5`: every patient scored with a setting chosen on the others), one harness
# run for the table: `ARMS=... bash checkpoints/wip/tumor_levers.sh eval`.
# ARMS (default "base synth geo all"), UNTIL=HH:MM stops by then with a checkpoint; rerun to resume (from runs/, or
# from checkpoints/wip/<arm>_last.safetensors when runs/ is gone).
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
ARMS=${ARMS:-base synth geo all}
if [ "${1:-}" = eval ]; then
  for a in $ARMS; do
    python -m eval.calibrate --checkpoint runs/tumor_lever_$a/last.safetensors --split val --cross-fit 5 \
        --out runs/tumor_lever_$a/calibrated.safetensors > runs/tumor_lever_$a.calibrate.json
  done
  exit 0
fi
. checkpoints/wip/lib.sh
CODE=$(code_snapshot tumor_levers_code)
maxmin=($(until_minutes))
arm() {  # arm NAME [--set ...]
  local out=runs/tumor_lever_$1; shift
  local resume=() init=() wip=checkpoints/wip/$(basename "$out")_last.safetensors
  if ls "$out"/checkpoints/step_*.pt >/dev/null 2>&1; then resume=(--resume latest)
  elif [ -f "$wip" ]; then init=(--init "$wip" --continue-schedule)
  fi
  OMP_NUM_THREADS=${THREADS:-1} python "$CODE"/train_diffusion.py --config configs/tumor_folds_cpu.yaml --out "$out" \
      --data-root ../shared/data --set data.fold=0 "${maxmin[@]}" "${resume[@]}" "${init[@]}" "$@" >> "$out.log" 2>&1
}
mkdir -p runs
for a in $ARMS; do
  case $a in
    base) arm base --set data.synthetic_fraction=0 --set data.zoom=0 --set data.rotate=0 & ;;
    synth) arm synth --set data.zoom=0 --set data.rotate=0 & ;;
    geo) arm geo --set data.synthetic_fraction=0 & ;;
    all) arm all & ;;
    wide) arm wide --set "model.block_out_channels=[32,64,128,256]" --set model.layers_per_block=2 & ;;
    *) echo "unknown arm $a (base, synth, geo, all, wide)" >&2; exit 2 ;;
  esac
done
wait
