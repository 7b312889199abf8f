#!/usr/bin/env bash
# Issue 28.1, parity: the diffusion model of 2026-12-01 (6,529 steps on crops; ct_inpaint_diffusion.safetensors until
# 2026-12-04, when this script's result replaced it: lib.sh's diffusion_20261201 takes it from git history) gets
# the release's stages c and d with the diffusion objective (configs/ct_cpu.yaml, x0-prediction, L1, t = T u^0.15):
#   stage c (runs/ct_dif_whole): 1,000 steps on whole 256x256 slices, batch 4, cosine from lr 1e-4;
#   stage d (runs/ct_dif_more):  3,000 steps on whole slices from stage c's last weights, cosine from lr 5e-5;
# the same 10 calibration patients held out as the release's stages (in-training validation there, never on the 53
# validation patients), no checkpoint chosen (last.safetensors is compared), as for the regressor.
# stage w (runs/ct_dif_warm, 2026-12-04 night): the diffusion model warm-started from the release itself
#   (checkpoints/ct_inpaint.safetensors, the regressor after stages c and d; train_diffusion.py zeroes its weights on
#   the noisy input, so at t = T-1 the model starts as the release), WARM_STEPS (default 800) steps on whole slices,
#   cosine from lr 5e-5, the same calibration patients held out. Run 2026-12-06: its step 250 (best.safetensors,
#   chosen on the calibration patients) is ct_inpaint_diffusion.safetensors since that day. That run was compiled
#   (only the outer layers trained); the eager rerun: WARM_NAME=ct_dif_warm_eager (runs/WARM_NAME; default ct_dif_warm),
#   2026-12-07: best calibration MAE 3.279 (step 375) against the compiled run's 3.260 (step 250): not kept.
# THREADS (default 1) threads; UNTIL=HH:MM stops by then with a checkpoint; STAGES (default "c d") which stages;
# EXTRA more --set flags (train.compile is ignored since 2026-12-07: compiled training zeroed most gradients;
# docs/results/training_and_serving.md).
# Resumable: rerun (from runs/, or when runs/ is gone from the slim weights committed as
# checkpoints/wip/<run>_last.safetensors: a finished stage's are its result, an unfinished one's go on).
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
. checkpoints/wip/lib.sh
CODE=$(code_snapshot ct_parity_code)
maxmin=($(until_minutes))
saved_step() {  # the step a slim checkpoint was saved at (0 when there is none)
  [ -f "$1" ] && python -c "import json,sys; from safetensors import safe_open; \
print(json.loads(safe_open(sys.argv[1], 'pt').metadata().get('extra', '{}')).get('step', 0))" "$1" || echo 0
}
last_of() {  # the slim last weights of a run: runs/ if it is there, else the committed ones
  if [ -f "$1/last.safetensors" ]; then echo "$1/last.safetensors"; else echo "checkpoints/wip/$(basename "$1")_last.safetensors"; fi
}
stage() {  # stage OUT INIT STEPS LR
  local out=$1 init=$2 steps=$3 lr=$4 resume=() wip=checkpoints/wip/$(basename "$1")_last.safetensors
  [ -f "$out/checkpoints/step_$(printf %07d "$steps").pt" ] && return 0
  [ "$(saved_step "$wip")" = "$steps" ] && return 0  # finished in an earlier session: its committed weights
  if ls "$out"/checkpoints/step_*.pt >/dev/null 2>&1; then resume=(--resume latest)
  elif [ -f "$wip" ]; then init=$wip; resume=(--continue-schedule)  # runs/ is gone: go on from the committed slim weights
  fi
  OMP_NUM_THREADS=${THREADS:-1} python "$CODE"/train_diffusion.py --config configs/ct_cpu.yaml --out "$out" \
      --init "$init" --data-root ../shared/data --set diffusion.timestep_power=0.15 \
      --set data.calib_patients=10 --set data.crop_size=256 --set train.batch_size=4 --set train.lr="$lr" \
      --set train.warmup_steps=20 --set train.max_steps="$steps" --set train.val_every=250 \
      --set train.val_slices=40 ${EXTRA:-} "${maxmin[@]}" "${resume[@]}" >> "$out.log" 2>&1
  [ -f "$out/checkpoints/step_$(printf %07d "$steps").pt" ] || { echo "$out stopped before step $steps: rerun"; exit 0; }
}
mkdir -p runs
case " ${STAGES:-c d} " in *" c "*) stage runs/ct_dif_whole "$(diffusion_20261201)" 1000 1e-4 ;; esac
case " ${STAGES:-c d} " in *" d "*) stage runs/ct_dif_more "$(last_of runs/ct_dif_whole)" 3000 5e-5 ;; esac
case " ${STAGES:-c d} " in *" w "*) stage "runs/${WARM_NAME:-ct_dif_warm}" "$PWD/checkpoints/ct_inpaint.safetensors" "${WARM_STEPS:-800}" 5e-5 ;; esac
