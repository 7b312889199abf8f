#!/usr/bin/env bash
# Issue #27: the release's CPU folds 3 and 4 retrained eagerly (their last ~700 steps had been compiled, which zeroed
# most gradients), judged out of fold inside the release's ensemble. One eval.crossval run, same patients and seeds,
# candidates: the release as committed (checkpoints/tumor_seg.safetensors: per fold its GPU network and its CPU
# network) and the same networks joined anew (the GPU release of 2026-12-04 as committed at 0e582be, the CPU half
# `cpu_fold` in lib.sh) with folds 3 and 4's CPU networks replaced by the eager ones
# (runs/tumor_eager_fold<k>, or checkpoints/wip/tumor_eager_fold<k>_last.safetensors), both cut at 30 % of the peak
# uptake; the threshold, size and candidate chosen inside the cross-fitting; the chosen candidate's fold ensemble is
# written to runs/tumor_seg_eager.safetensors (runs/tumor_cv_eager: the report and figure). THREADS (2).
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
. checkpoints/wip/lib.sh
GPU=$(git_file 0e582be checkpoints/tumor_seg.safetensors tumor_seg_20261204.safetensors)
eager() { local f=runs/tumor_eager_fold$1/last.safetensors
          [ -f "runs/tumor_eager_fold$1/checkpoints/step_0001200.pt" ] || f=checkpoints/wip/tumor_eager_fold$1_last.safetensors
          echo "$f"; }
cpu() { for k in 0 1 2; do cpu_fold $k; done; for k in 3 4; do eager $k; done; }
joined() { echo "$GPU+$(tr '\n' + | sed 's/+$//')@uptake_fraction=0.3"; }
for f in $(cpu); do [ -f "$f" ] || { echo "missing $f" >&2; exit 1; }; done
OMP_NUM_THREADS=${THREADS:-2} python -m eval.crossval --checkpoint checkpoints/tumor_seg.safetensors "$(cpu | joined)" \
    --data-root ../shared/data --out runs/tumor_cv_eager --release runs/tumor_seg_eager.safetensors \
    > runs/tumor_cv_eager.log 2>&1
