#!/usr/bin/env bash
# Issue #28.4, capacity for both objectives: from each objective's parity weights (the regressor: the release
# checkpoints/ct_inpaint.safetensors; the diffusion model: stage d of ct_parity.sh, runs/ct_dif_more or its committed
# slim weights), 1,000 more steps on whole slices (batch 4, cosine from lr 5e-5, the 10 calibration patients held out),
# once at today's size and once grown to 2 layers per block (`--init` into model.layers_per_block=2: every new
# resnet starts as the identity, so the grown network starts computing what the parity network did). Equal steps per
# objective; the arm with the lower calibration MAE at step 1,000 is the one to release (then scored on the 530
# validation slices, one harness run, against the release).
#   ARMS (default "reg_same reg_deep"; "dif_same dif_deep" once stage d is done), THREADS (default 1) each, EXTRA
#   (more --set flags for every arm; train.compile is ignored: compiled training zeroed most gradients),
#   UNTIL=HH:MM stops by then with a checkpoint; rerun to resume (runs/, or checkpoints/wip/<arm>_last.safetensors).
# Measured eagerly (2026-12-07/08, docs/results/ct_inpainting.md): the regressor's arms 3.223 / 3.225 (release 3.224);
# the diffusion arms 3.409 / 3.409 (parity weights 3.483; the released diffusion model 3.260): depth adds nothing.
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
. checkpoints/wip/lib.sh
CODE=$(code_snapshot ct_growth_code)
maxmin=($(until_minutes))
dif_parity() { if [ -f runs/ct_dif_more/last.safetensors ]; then echo runs/ct_dif_more/last.safetensors;
               else echo checkpoints/wip/ct_dif_more_last.safetensors; fi; }
arm() {  # arm NAME CONFIG INIT [--set ...]
  local out=runs/ct_grow_$1 config=$2 init=$3; shift 3
  local resume=() wip=checkpoints/wip/$(basename "$out")_last.safetensors
  if ls "$out"/checkpoints/step_*.pt >/dev/null 2>&1; then resume=(--resume latest)
  elif [ -f "$wip" ]; then init=$wip; resume=(--continue-schedule)
  fi
  [ -f "$init" ] || { echo "$out: no start weights $init (run ct_parity.sh first)" >&2; return 2; }
  OMP_NUM_THREADS=${THREADS:-1} python "$CODE"/train_diffusion.py --config "$config" --out "$out" --init "$init" \
      --data-root ../shared/data --set data.calib_patients=10 --set data.crop_size=256 --set train.batch_size=4 \
      --set train.lr=5e-5 --set train.warmup_steps=20 --set train.max_steps=1000 --set train.val_every=250 \
      --set train.val_slices=40 "${maxmin[@]}" "${resume[@]}" "$@" ${EXTRA:-} >> "$out.log" 2>&1
}
mkdir -p runs
for a in ${ARMS:-reg_same reg_deep}; do
  case $a in
    reg_same) arm reg_same configs/ct_regress_cpu.yaml checkpoints/ct_inpaint.safetensors & ;;
    reg_deep) arm reg_deep configs/ct_regress_cpu.yaml checkpoints/ct_inpaint.safetensors \
                  --set model.layers_per_block=2 & ;;
    dif_same) arm dif_same configs/ct_cpu.yaml "$(dif_parity)" --set diffusion.timestep_power=0.15 & ;;
    dif_deep) arm dif_deep configs/ct_cpu.yaml "$(dif_parity)" --set diffusion.timestep_power=0.15 \
                  --set model.layers_per_block=2 & ;;
    *) echo "unknown arm $a (reg_same, reg_deep, dif_same, dif_deep)" >&2; exit 2 ;;
  esac
done
wait
