#!/usr/bin/env bash
# Issue 14.3, after checkpoints/wip/ct_levers.sh: choose among the arms on the 10 calibration patients (never trained
# on by the arms; the release they started from did see them, so the release itself is not scored there), then score
# the arms and the release side by side on all 530 validation slices, one harness run, each at the release's default
# setting (regressor:1, flip pair). Only the val run's numbers are reported. ARMS as in ct_levers.sh.
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
BASE=${BASE:-runs/ct_inpaint_2026-12-01.safetensors}  # the arms' start: the release of 2026-12-01 (since replaced)
[ -f "$BASE" ] || { mkdir -p runs && git show 84c61ce:checkpoints/ct_inpaint.safetensors > "$BASE"; }
pair="sampler=regressor:1,ensemble=2,flip=1"
declare -A name=([crops]="continued on 128 crops" [whole]="final stage on whole slices"
                 [attn]="128 crops with attention at level 3")
calib=() val=(--variant "name=the 2026-12-01 release (6529 steps),checkpoint=$BASE")
for a in ${ARMS:-crops whole}; do
  calib+=(--variant "name=${name[$a]} (1000 steps),checkpoint=runs/ct_reg_$a/last.safetensors,$pair")
  val+=(--variant "name=${name[$a]} (+1000 steps),checkpoint=runs/ct_reg_$a/last.safetensors,$pair")
done
python -m eval.compare --task ct --split calib --data-root ../shared/data --out runs/compare_ct_levers_calib \
    "${calib[@]}" > runs/compare_ct_levers_calib.log 2>&1
python -m eval.compare --task ct --split val --data-root ../shared/data --out runs/compare_ct_levers_val \
    "${val[@]}" > runs/compare_ct_levers_val.log 2>&1
