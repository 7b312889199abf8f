#!/usr/bin/env bash
# Issue #27, the levers one at a time, on fold 0 of the 5-fold split (configs/tumor_folds_cpu.yaml), trained fresh
# for the same 1,200 steps, side by side (THREADS threads each, default 1):
#   base  today's segmenter recipe (no synthetic tumors, no zoom or rotation)
#   synth + synthetic tumors pasted into a quarter of the items (data.synthetic_fraction 0.25)
#   geo   + zoom 0.8-1.25 and rotations up to 10 degrees
#   all   both (the fold config as written)
#   gamma all, with the uptake's contrast and gamma jittered (data.intensity_aug 0.3: contrast 0.7-1.3, gamma
#         e^-0.3..e^0.3; off in #13's measurement, +0.008 +- 0.031, measured again with the other levers on)
#   wide  all, with a wider and deeper network (32-256 channels, 2 layers per block), at base's compute: WIDE_STEPS
#         steps = 1,200 x (base's seconds per step) / (wide's), the two timed side by side on one machine
#         (`checkpoints/wip/tumor_levers.sh bench` prints the ratio; ROUNDS=N rounds, default 3)
# Then each arm's threshold and component size are cross-fitted on fold 0's 30 held-out patients
# (`eval.calibrate --split val --cross-fit 5`: every patient scored with a setting chosen on the others), one harness
# run for the table: `ARMS=... bash checkpoints/wip/tumor_levers.sh eval`.
# ARMS (default "base synth geo all"), UNTIL=HH:MM stops by then with a checkpoint; rerun to resume (from runs/, or
# from checkpoints/wip/<arm>_last.safetensors when runs/ is gone).
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
ARMS=${ARMS:-base synth geo all}
WIDE='--set model.block_out_channels=[32,64,128,256] --set model.layers_per_block=2'
if [ "${1:-}" = bench ]; then  # seconds per training step of base and wide, alternating rounds, one thread each
  for r in $(seq "${ROUNDS:-3}"); do for a in base wide; do
    extra=(); [ $a = wide ] && extra=($WIDE)
    OMP_NUM_THREADS=1 timeout 900 python train_diffusion.py --config configs/tumor_folds_cpu.yaml --out /tmp/bench_$a \
        --data-root ../shared/data --set data.fold=0 --set train.max_steps=21 --set train.log_every=5 --set train.val_every=1000 \
        --set train.checkpoint_every=1000 "${extra[@]}" > /dev/null 2>&1
    python -c "import json,sys; r=[json.loads(l) for l in open('/tmp/bench_$a/metrics.jsonl') if 'elapsed_s' in l]; \
print('$a', round((r[-1]['elapsed_s']-r[0]['elapsed_s'])/(r[-1]['step']-r[0]['step']),2), 's/step')"
    rm -rf /tmp/bench_$a
  done; done
  exit 0
fi
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
    gamma) arm gamma --set data.intensity_aug=0.3 & ;;
    wide) arm wide $WIDE --set train.max_steps="${WIDE_STEPS:?set WIDE_STEPS (see bench)}" & ;;
    *) echo "unknown arm $a (base, synth, geo, all, gamma, wide)" >&2; exit 2 ;;
  esac
done
wait
