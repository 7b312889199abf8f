#!/usr/bin/env bash
# Issue #28.3, calibrated intervals: the conformal margins of a CT model fitted on its calibration patients
# (eval.calibrate_interval, --limit slices spread over them), then its 80 % interval on the interval study's 20
# validation slices, calibrated and (RAW=1) raw: same slices, same seeds, same members.
# CKPT (default the parity diffusion weights of stage c), SAMPLER (ddim; "regressor" for the regressor, with
# STEPS 1), STEPS (1), ENSEMBLE (8), FLIP (on), SCORE (shift | scaled), LIMIT (40), RAW (1), OUT (runs/interval_calib).
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
. checkpoints/wip/lib.sh
CODE=$(code_snapshot ct_interval_calib_code)
DATA=$(cd ../shared/data && pwd) OUT=$PWD/${OUT:-runs/interval_calib}
CKPT=$(realpath "${CKPT:-checkpoints/wip/ct_dif_whole_last.safetensors}")
SETTING=(--sampler "${SAMPLER:-ddim}" --steps "${STEPS:-1}" --ensemble "${ENSEMBLE:-8}" --flip "${FLIP:-on}")
mkdir -p "$OUT"
cd "$CODE"
export OMP_NUM_THREADS=${THREADS:-1}
python -m eval.calibrate_interval --checkpoint "$CKPT" --data-root "$DATA" --split calib --limit "${LIMIT:-40}" \
    "${SETTING[@]}" --score "${SCORE:-shift}" --out "$OUT/calibrated.safetensors" > "$OUT/calibrate.log" 2>&1
python infer.py --task ct --checkpoint "$OUT/calibrated.safetensors" --data-root "$DATA" --split val --limit 20 \
    --interval 0.8 --out "$OUT/val_calibrated" > "$OUT/val_calibrated.log" 2>&1
if [ "${RAW:-1}" = 1 ]; then
  python infer.py --task ct --checkpoint "$CKPT" --data-root "$DATA" --split val --limit 20 "${SETTING[@]}" \
      --interval 0.8 --out "$OUT/val_raw" > "$OUT/val_raw.log" 2>&1
fi
