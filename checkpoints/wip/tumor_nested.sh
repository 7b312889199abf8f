#!/usr/bin/env bash
# Issue #27, the lever "folds 1 vs 5" (nnU-Net's fold ensemble against one network on all the training patients),
# measured on patients neither saw: inside fold 0 of the 5-fold split, its 120 training patients dealt into five
# inner folds (`data.inner_folds: 5`); inner model j trains on the other four inner folds' 96 patients (and every
# control) with the fold recipe as written (configs/tumor_folds_cpu.yaml, 1,200 steps fresh: the `all` arm of the
# lever table, which trained on all 120), runs/tumor_nest<j>. Then (stage `eval`) the five joined into one ensemble
# (`python -m eval.join`) and scored against `all` on fold 0's 30 held-out patients in one calibration run
# (`eval.calibrate --split val --cross-fit 5`: same images and seeds, each candidate's threshold and size
# cross-fitted, paired over patients; the five single inner networks scored beside them). Measured 2026-12-07: the
# five joined 0.757 ± 0.033 against `all` 0.740 ± 0.037 (docs/results/tumor_segmentation.md; stage `figure` draws
# docs/tumor_folds_1_vs_5.png from the report).
# INNER (default "0 1 2 3 4") the inner folds to train, one after the other, THREADS (default 2) threads;
# UNTIL=HH:MM stops by then with a checkpoint; rerun to resume (from runs/, or from the slim weights committed as
# checkpoints/wip/tumor_nest<j>_last.safetensors when runs/ is gone).
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
. checkpoints/wip/lib.sh
THREADS=${THREADS:-2}
INNER=${INNER:-0 1 2 3 4}
weights() {  # weights J: inner model J's slim weights, from runs/ or as committed
  [ -f runs/tumor_nest$1/last.safetensors ] && echo runs/tumor_nest$1/last.safetensors \
      || echo checkpoints/wip/tumor_nest$1_last.safetensors
}
finished() {  # finished J: inner model J has its 1,200 steps (in runs/ or in the committed slim weights)
  [ -f runs/tumor_nest$1/checkpoints/step_0001200.pt ] || python -c "import sys; from diffusion.checkpoint import \
load_slim; sys.exit(load_slim('checkpoints/wip/tumor_nest$1_last.safetensors')[2].get('step') != 1200)" 2>/dev/null
}
if [ "${1:-}" = figure ]; then  # docs/tumor_folds_1_vs_5.png from the eval stage's report
  python - runs/tumor_nest_cmp/calibrated.safetensors.threshold.json docs/tumor_folds_1_vs_5.png <<'EOF'
import json, sys
import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt; import numpy as np
rows = json.load(open(sys.argv[1]))["cross_fit"]["per_checkpoint"]
(all_arm, joined, *singles) = [np.array(r["scores"]) for r in rows.values()]
names = ["all (120)"] + [f"inner {j} (96)" for j in range(len(singles))] + ["5 joined"]
values = [all_arm, *singles, joined]
fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
se = [v.std(ddof=1) / np.sqrt(len(v)) for v in values]
a.bar(names, [v.mean() for v in values], yerr=se, color=["C0"] + ["C7"] * len(singles) + ["C3"], capsize=3)
a.set_ylim(0.5, 0.85); a.set_ylabel("Dice (cross-fitted), fold 0's 30 patients"); a.tick_params(axis="x", rotation=30)
a.set_title("one network on all 120 vs five on 96 each")
b.scatter(all_arm, joined, s=18); b.plot([0, 1], [0, 1], "k:", lw=1)
b.set_xlabel("all: one network on 120 patients"); b.set_ylabel("the five inner networks joined")
d = joined - all_arm
b.set_title(f"per patient: {d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(len(d)):.3f} (paired)")
fig.tight_layout(); fig.savefig(sys.argv[2], dpi=110); print("wrote", sys.argv[2])
EOF
  exit 0
fi
if [ "${1:-}" = eval ]; then
  nets=(); for j in 0 1 2 3 4; do finished $j || { echo "inner fold $j not finished" >&2; exit 1; }; nets+=($(weights $j)); done
  python -m eval.join --checkpoint "${nets[@]}" --out runs/tumor_nest_joined.safetensors
  mkdir -p runs/tumor_nest_cmp  # the five single inner networks are candidates too (one network on 96 patients)
  OMP_NUM_THREADS=$THREADS python -m eval.calibrate --checkpoint checkpoints/wip/tumor_lever_all_last.safetensors \
      runs/tumor_nest_joined.safetensors "${nets[@]}" --data-root ../shared/data --split val --cross-fit 5 \
      --out runs/tumor_nest_cmp/calibrated.safetensors > runs/tumor_nest_cmp.json
  exit 0
fi
CODE=$(code_snapshot tumor_nested_code)
mkdir -p runs
for j in $INNER; do
  finished $j && continue
  train_run configs/tumor_folds_cpu.yaml runs/tumor_nest$j 1200 --set data.fold=0 --set data.inner_folds=5 \
      --set data.inner_fold=$j
done
