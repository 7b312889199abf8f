#!/usr/bin/env bash
# Issue #27: a run of the folds with the `gamma` recipe (every lever of configs/tumor_folds_cpu.yaml plus the uptake's
# contrast and gamma jittered, data.intensity_aug 0.3; +0.011 ± 0.019 over `all` as one network on fold 0), judged out
# of fold inside the release's ensemble. Fold 0 is the `gamma` arm of tumor_levers.sh; folds 1-4 from
#   RUN=tumor_gamma_fold LEVERS="--set data.intensity_aug=0.3" STAGES=seg FOLDS="1 2 3 4" \
#       PARALLEL=1 THREADS=2 UNTIL=HH:MM bash checkpoints/wip/tumor_folds.sh
# (runs/tumor_gamma_fold<k>, or their slim weights committed as checkpoints/wip/tumor_gamma_fold<k>_last.safetensors).
# One eval.crossval run, same patients and seeds, every candidate cut at 30 % of the peak uptake (the release's
# default): the release (per fold the GPU network + the CPU `all`-recipe network), the GPU network + the gamma network
# (the CPU half replaced), all three networks per fold (the size rule of the geo run: one pass each above 240,000 px,
# to stay in the time budget), and the CPU and gamma networks alone (the lever on one network); threshold, size and
# candidate chosen inside the cross-fitting; the chosen candidate's fold ensemble written to
# runs/tumor_seg_gamma.safetensors (runs/tumor_cv_gamma: the report and figure). THREADS (2).
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
. checkpoints/wip/lib.sh
GPU=$(git_file 0e582be checkpoints/tumor_seg.safetensors tumor_seg_20261204.safetensors)
cpu() { for k in 0 1 2 3 4; do cpu_fold $k; done; }  # the CPU half of the release
gamma() {
  echo checkpoints/wip/tumor_lever_gamma_last.safetensors
  for k in 1 2 3 4; do
    if [ -f "runs/tumor_gamma_fold$k/checkpoints/step_0001200.pt" ]; then echo "runs/tumor_gamma_fold$k/last.safetensors"
    else echo "checkpoints/wip/tumor_gamma_fold${k}_last.safetensors (1,200 steps not reached)"; fi
  done
}
plus() { tr '\n' + | sed 's/+$//'; }
for f in $(cpu) $(gamma); do [ -f "$f" ] || { echo "missing $f" >&2; exit 1; }; done
OMP_NUM_THREADS=${THREADS:-2} python -m eval.crossval \
    --checkpoint "$GPU+$(cpu | plus)@uptake_fraction=0.3" "$GPU+$(gamma | plus)@uptake_fraction=0.3" \
    "$GPU+$(cpu | plus)+$(gamma | plus)@uptake_fraction=0.3,ensemble_max_pixels=240000" \
    $(cpu | sed 's/$/@uptake_fraction=0.3/') $(gamma | sed 's/$/@uptake_fraction=0.3/') \
    --data-root ../shared/data --out runs/tumor_cv_gamma --release runs/tumor_seg_gamma.safetensors \
    > runs/tumor_cv_gamma.log 2>&1
