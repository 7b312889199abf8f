#!/usr/bin/env bash
# Issue 28.1-28.2, after ct_parity.sh: what parity bought, and the student from the new teacher.
#   compare: the equal-compute table, one harness run on all 530 validation slices (53 patients, same slices and
#     seeds): the release (the regressor, 10,529 steps, flip pair), the diffusion model at parity (10,529 steps,
#     its default DDIM-1 x 8 with flips, and one member) -> runs/compare_ct_parity (the diffusion model before
#     parity was scored on the same slices with the same seeds in docs/compare_ct_equal_compute.csv; the training
#     run's weights carry its in-training sampler, one member, so the default is named). Nothing is
#     chosen here: last weights against last weights, as for the regressor.
#   distill: the 1-evaluation ensemble student (configs/ct_distill_ensemble_cpu.yaml) re-distilled from the parity
#     model, on whole 256x256 slices (batch 4: the pixels per step of the first student's 16 crops of 128x128),
#     the teacher's own 10 calibration patients held out (in-training check there) -> runs/ct_distill_parity.
# WHICH=warm (2026-12-06): the same for the diffusion model warm-started from the release (ct_parity.sh stage w,
#   runs/ct_dif_warm, WARM_STEPS default 800), its weights chosen on the calibration patients (best.safetensors:
#   its in-training MAE there rose from step 250 on): compare -> runs/compare_ct_warm, with its last weights (one
#   member) and the diffusion release of 2026-12-04 (the parity model, calibrated; from git history) side by side; distill ->
#   runs/ct_distill_warm, DISTILL_STEPS (default 400) steps.
# STAGES (default "compare distill"), THREADS (default 2), UNTIL=HH:MM stops training by then with a checkpoint;
# rerun to resume (from runs/, or from checkpoints/wip/ct_distill_<WHICH>_last.safetensors).
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
. checkpoints/wip/lib.sh
CODE=$(code_snapshot ct_parity_eval_code)
export OMP_NUM_THREADS=${THREADS:-2}
ROOT=$PWD DATA=$(cd ../shared/data && pwd)
WHICH=${WHICH:-parity}
case $WHICH in
  parity) run=ct_dif_more steps=3000 pick=last what="diffusion at parity (10529 steps;" others=() ;;
  warm) run=ct_dif_warm steps=${WARM_STEPS:-800} pick=best what="diffusion warm-started from the release (best on calibration;"
        others=(--variant "name=diffusion warm-started from the release (last; one member),checkpoint=$ROOT/runs/$run/last.safetensors,ensemble=1,flip=0"
                --variant "name=diffusion release of 2026-12-04 (parity; DDIM-1 x 8 with flips),checkpoint=$(diffusion_20261204)") ;;
  *) echo "WHICH=$WHICH: parity or warm" >&2; exit 2 ;;
esac
last=runs/$run/last.safetensors teacher=runs/$run/$pick.safetensors
[ -f "$last" ] || last=checkpoints/wip/${run}_last.safetensors teacher=checkpoints/wip/${run}_$pick.safetensors
step=$(python -c "import json,sys; from safetensors import safe_open; \
print(json.loads(safe_open(sys.argv[1], 'pt').metadata().get('extra', '{}')).get('step', 0))" "$last")
[ "$step" = "$steps" ] || { echo "$last is at step $step of $steps: run ct_parity.sh first" >&2; exit 2; }
mkdir -p runs
case " ${STAGES:-compare distill} " in *" compare "*)
  [ -f runs/compare_ct_$WHICH/results.md ] || (cd "$CODE" && python -m eval.compare --task ct --split val \
      --data-root "$DATA" --out "$ROOT"/runs/compare_ct_$WHICH \
      --variant "name=release (regressor; 10529 steps; flip pair),checkpoint=$ROOT/checkpoints/ct_inpaint.safetensors" \
      --variant "name=$what DDIM-1 x 8 with flips),checkpoint=$ROOT/$teacher,ensemble=8,flip=1" \
      --variant "name=$what one member),checkpoint=$ROOT/$teacher,ensemble=1,flip=0" "${others[@]}" \
      ) > runs/compare_ct_$WHICH.log 2>&1 ;;
esac
case " ${STAGES:-compare distill} " in *" distill "*)
  train_run configs/ct_distill_ensemble_cpu.yaml runs/ct_distill_$WHICH "${DISTILL_STEPS:-400}" \
      --set distill.teacher="$teacher" --set data.crop_size=256 --set train.batch_size=4 ;;
esac
