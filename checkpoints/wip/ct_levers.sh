#!/usr/bin/env bash
# Issue 14.3, arms at equal steps from the release of 2026-12-01 (BASE: the regressor at equal compute, since
# replaced by the whole-slice arm), side by side: it continued on 128 crops (batch 16, arm "crops"), a final stage on
# whole 256x256 slices (batch 4: the same pixels per step, arm "whole"), and the crops arm with self-attention added at the deepest
# level (model.attention_levels=[3], each new block starting as the identity, arm "attn"). All: the release's
# regressor recipe on a fresh 1,000-step cosine at half its stage-b learning rate (1e-4), 10 training patients held
# out as calibration patients (in-training validation there, never on the 53 validation patients); no checkpoint is
# chosen (last.safetensors is compared).
# Then checkpoints/wip/ct_levers_eval.sh chooses the arm on the calibration patients and reports it on validation.
# ARMS="crops whole attn" (default "crops whole") runs those arms side by side, THREADS (default 1) threads each.
# Arm "more" (2026-12-02, across sessions; the release since): the release of 2026-12-02 morning (the whole-slice arm;
# MORE_BASE, by default extracted from git) trained on, whole slices, a 3,000-step cosine from lr 5e-5.
# UNTIL=HH:MM stops them by then (with a checkpoint); resumable: rerun (from runs/, or, when runs/ is gone, from the
# slim weights committed as checkpoints/wip/<arm>_last.safetensors).
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
BASE=${BASE:-runs/ct_inpaint_2026-12-01.safetensors}  # the arms' start: the release of 2026-12-01 (since replaced)
MORE_BASE=${MORE_BASE:-runs/ct_inpaint_2026-12-02.safetensors}  # arm "more"'s start: the release of 2026-12-02 (morning)
from_git() {  # from_git PATH COMMIT: a former release, extracted once, only for the arms that start from it
  [ -f "$1" ] || { mkdir -p runs && git show "$2":checkpoints/ct_inpaint.safetensors > "$1.part" && mv "$1.part" "$1"; }
}
CODE=/tmp/ct_levers_code_$(git rev-parse --short HEAD)  # the code as committed: later edits do not reach the runs
[ -d "$CODE" ] || { mkdir -p "$CODE" && git archive HEAD | tar -x -C "$CODE"; }
maxmin=()
if [ -n "${UNTIL:-}" ]; then  # a clock time; one already past today means tomorrow
  stop=$(date -d "$UNTIL" +%s); [ "$stop" -gt "$(date +%s)" ] || stop=$(date -d "tomorrow $UNTIL" +%s)
  maxmin=(--max-minutes $(( (stop - $(date +%s)) / 60 )))
fi
arm() {  # arm OUT [--set ...]
  local out=$1; shift
  local resume=() init=$BASE wip=checkpoints/wip/$(basename "$out")_last.safetensors
  if ls "$out"/checkpoints/step_*.pt >/dev/null 2>&1; then resume=(--resume latest)
  elif [ -f "$wip" ]; then init=$wip; resume=(--continue-schedule)  # runs/ is gone: go on from the committed slim weights
  fi
  OMP_NUM_THREADS=${THREADS:-1} python "$CODE"/train_diffusion.py --config configs/ct_regress_cpu.yaml --out "$out" \
      --init "$init" --data-root ../shared/data \
      --set data.calib_patients=10 --set train.lr=1e-4 --set train.warmup_steps=20 --set train.max_steps=1000 \
      --set train.val_every=250 --set train.val_slices=40 "${maxmin[@]}" "${resume[@]}" "$@" >> "$out.log" 2>&1
}
for a in ${ARMS:-crops whole}; do
  case $a in more) from_git "$MORE_BASE" d8e5ab8 ;; crops|whole|attn) from_git "$BASE" 84c61ce ;; esac
  case $a in
    crops) arm runs/ct_reg_crops & ;;
    whole) arm runs/ct_reg_whole --set data.crop_size=256 --set train.batch_size=4 & ;;
    attn) arm runs/ct_reg_attn --set "model.attention_levels=[3]" & ;;
    more) BASE=$MORE_BASE arm runs/ct_reg_more --set data.crop_size=256 \
            --set train.batch_size=4 --set train.lr=5e-5 --set train.max_steps=3000 & ;;
    *) echo "unknown arm $a (crops, whole, attn, more)" >&2; exit 2 ;;
  esac
done
wait
