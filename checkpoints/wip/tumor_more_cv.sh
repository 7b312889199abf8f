#!/usr/bin/env bash
# Issue #27: the release's CPU half trained on, judged out of fold inside the release's ensemble. The release joins,
# per fold, the GPU model (the release of 2026-12-04, git show 0e582be) with the CPU model of 2026-12-03 (1,200 steps
# of batch 16). Each CPU model went on for a second cosine cycle (`NAME=c450 STEPS=450 ... bash
# checkpoints/wip/tumor_more.sh`: runs/tumor_fold<k>_c450/last.safetensors) and was averaged with its start
# (runs/tumor_fold<k>_c450/average.safetensors). One eval.crossval run, same patients and seeds, candidates:
#   the release (GPU + CPU), GPU + continuation, GPU + average, GPU + CPU + continuation (three networks per fold),
#   each cut at 30 % of the peak uptake (the release's default), and the three CPU networks alone (the lever on one
#   network);
# the threshold, size and candidate chosen inside the cross-fitting; the chosen candidate's fold ensemble is written
# to runs/tumor_seg_NAME.safetensors (runs/tumor_cv_NAME: the report and figure). NAME (c450), THREADS (2).
# NAME=e450: the same continuation trained eagerly (2026-12-07, seventh session; c450's had been compiled, void).
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
. checkpoints/wip/lib.sh
NAME=${NAME:-c450}
GPU=$(git_file 0e582be checkpoints/tumor_seg.safetensors tumor_seg_20261204.safetensors)
cpu() { for k in 0 1 2 3 4; do cpu_fold $k; done; }  # the CPU half of the release
run() { for k in 0 1 2 3 4; do echo "runs/tumor_fold${k}_$NAME/$1.safetensors"; done; }
joined() { echo "$GPU+$(tr '\n' + | sed 's/+$//')@uptake_fraction=0.3"; }
alone() { sed 's/$/@uptake_fraction=0.3/'; }
for f in $(cpu) $(run last) $(run average); do [ -f "$f" ] || { echo "missing $f" >&2; exit 1; }; done
OMP_NUM_THREADS=${THREADS:-2} python -m eval.crossval \
    --checkpoint "$(cpu | joined)" "$(run last | joined)" "$(run average | joined)" "$( (cpu; run last) | joined)" \
    $(cpu | alone) $(run last | alone) $(run average | alone) \
    --data-root ../shared/data --out runs/tumor_cv_$NAME --release runs/tumor_seg_$NAME.safetensors \
    > runs/tumor_cv_$NAME.log 2>&1
