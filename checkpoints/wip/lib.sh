# Shared by the wip recipes (source it): a frozen copy of the committed code, and UNTIL=HH:MM as --max-minutes.
code_snapshot() {  # code_snapshot NAME: /tmp/NAME_<commit>, the code as committed (later edits do not reach a run)
  local code=/tmp/$1_$(git rev-parse --short HEAD)
  [ -d "$code" ] || { mkdir -p "$code.part" && git archive HEAD | tar -x -C "$code.part" && mv "$code.part" "$code"; }
  echo "$code"
}
# UNTIL (a clock time) is read once, when the recipe starts: one already past then means tomorrow, but a run of the
# chain that starts after it is not started (it would otherwise train until tomorrow's UNTIL).
if [ -n "${UNTIL:-}" ] && [ -z "${UNTIL_EPOCH:-}" ]; then
  UNTIL_EPOCH=$(date -d "$UNTIL" +%s); [ "$UNTIL_EPOCH" -gt "$(date +%s)" ] || UNTIL_EPOCH=$(date -d "tomorrow $UNTIL" +%s)
fi
until_minutes() {  # until_minutes: the --max-minutes arguments for UNTIL (0 when it has passed)
  [ -n "${UNTIL:-}" ] || return 0
  local left=$(( (UNTIL_EPOCH - $(date +%s)) / 60 ))
  echo --max-minutes $(( left > 0 ? left : 0 ))
}
train_run() {  # train_run CONFIG OUT STEPS [args...]: one run of $CODE, resumed from runs/ or the committed slim weights
  local config=$1 out=$2 steps=$3; shift 3
  [ -f "$out/checkpoints/step_$(printf %07d "$steps").pt" ] && return 0
  [ "$(until_minutes)" != "--max-minutes 0" ] || { echo "$out: not started, UNTIL=$UNTIL has passed" >&2; return 0; }
  local resume=() wip=checkpoints/wip/$(basename "$out")_last.safetensors
  if ls "$out"/checkpoints/step_*.pt >/dev/null 2>&1; then resume=(--resume latest)
  elif [ -f "$wip" ]; then resume=(--continue-schedule); set -- "$@" --init "$wip"
  fi
  OMP_NUM_THREADS=${THREADS:-1} python "$CODE"/train_diffusion.py --config "$config" --out "$out" \
      --data-root ../shared/data --set train.max_steps="$steps" $(until_minutes) "${resume[@]}" "$@" >> "$out.log" 2>&1
}
cpu_fold() {  # cpu_fold K: fold K's CPU-trained segmenter (2026-12-03; fold 0's is the `all` arm of tumor_levers.sh)
  [ "$1" = 0 ] && echo checkpoints/wip/tumor_lever_all_last.safetensors \
      || echo "checkpoints/wip/tumor_fold$1_last.safetensors"
}
in_parallel() {  # in_parallel FUNCTION: FUNCTION k for every k in $FOLDS, PARALLEL (default 2) at a time
  local running=0 k
  for k in $FOLDS; do
    "$1" "$k" & running=$((running + 1))
    if [ "$running" -ge "${PARALLEL:-2}" ]; then wait -n; running=$((running - 1)); fi
  done
  wait
}
git_file() {  # git_file REV PATH NAME: runs/NAME, the file PATH as committed at REV (a release replaced since)
  local f=$PWD/runs/$3
  [ -f "$f" ] || { mkdir -p runs && git show "$1:$2" > "$f"; }
  echo "$f"
}
diffusion_20261201() {  # the CT diffusion model of 2026-12-01 (ct_inpaint_diffusion.safetensors until 2026-12-04)
  git_file b25b63c checkpoints/ct_inpaint_diffusion.safetensors ct_inpaint_diffusion_20261201.safetensors
}
diffusion_20261204() {  # the CT parity diffusion model of 2026-12-04 (ct_inpaint_diffusion.safetensors until 2026-12-06)
  git_file 4fa0bc2 checkpoints/ct_inpaint_diffusion.safetensors ct_inpaint_diffusion_20261204.safetensors
}
