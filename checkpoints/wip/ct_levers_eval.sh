#!/usr/bin/env bash
# Issue 14.3, after checkpoints/wip/ct_levers.sh: choose between the two arms on the 10 calibration patients (never
# trained on by the arms; the release they started from did see them, so the release itself is not scored there), then
# score the chosen arm, the other arm and the release side by side on all 530 validation slices, one harness run, each
# at the release's default setting (regressor:1, flip pair). Only the val run's numbers are reported.
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
pair="sampler=regressor:1,ensemble=2,flip=1"
python -m eval.compare --task ct --split calib --data-root ../shared/data --out runs/compare_ct_levers_calib \
    --variant "name=continued on 128 crops (1000 steps),checkpoint=runs/ct_reg_crops/last.safetensors,$pair" \
    --variant "name=final stage on whole slices (1000 steps),checkpoint=runs/ct_reg_whole/last.safetensors,$pair" \
    > runs/compare_ct_levers_calib.log 2>&1
python -m eval.compare --task ct --split val --data-root ../shared/data --out runs/compare_ct_levers_val \
    --variant "name=the release (6529 steps),checkpoint=checkpoints/ct_inpaint.safetensors" \
    --variant "name=continued on 128 crops (+1000 steps),checkpoint=runs/ct_reg_crops/last.safetensors,$pair" \
    --variant "name=final stage on whole slices (+1000 steps),checkpoint=runs/ct_reg_whole/last.safetensors,$pair" \
    > runs/compare_ct_levers_val.log 2>&1
