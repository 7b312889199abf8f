#!/usr/bin/env bash
# Issue #28.3, the interval study: on 20 validation slices (one each from 20 patients: --limit spreads over the patients), the
# released diffusion model's per-pixel central 80 % interval, the MAE of the per-pixel median, and the coverage curve,
# for the near-deterministic one-step members (DDIM-1) and ancestral sampling (DDPM-10), 4 and 16 members each.
# One harness run (same slices, same seeds): runs/intervals/{results.csv,coverage.png,pareto.png}.
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
. checkpoints/wip/lib.sh
CODE=$(code_snapshot ct_intervals_code)
REPO=$PWD DATA=$(cd ../shared/data && pwd) OLD=$(diffusion_20261201)  # the model this study measured (2026-12-03)
cd "$CODE" && OMP_NUM_THREADS=${THREADS:-1} python -m eval.ablate --task ct --data-root "$DATA" --split val \
    --limit 20 --checkpoint "$OLD" --samplers ${SAMPLERS:-ddim:1,ddpm:10} --ensemble ${ENSEMBLE:-4,16} \
    --interval 0.8 --out "$REPO"/runs/${OUT:-intervals} > "$REPO"/runs/${OUT:-intervals}.log 2>&1
