# Shared by the wip recipes (source it): a frozen copy of the committed code, and UNTIL=HH:MM as --max-minutes.
code_snapshot() {  # code_snapshot NAME: /tmp/NAME_<commit>, the code as committed (later edits do not reach a run)
  local code=/tmp/$1_$(git rev-parse --short HEAD)
  [ -d "$code" ] || { mkdir -p "$code.part" && git archive HEAD | tar -x -C "$code.part" && mv "$code.part" "$code"; }
  echo "$code"
}
until_minutes() {  # until_minutes: the --max-minutes arguments for UNTIL (a clock time; one already past means tomorrow)
  [ -n "${UNTIL:-}" ] || return 0
  local stop
  stop=$(date -d "$UNTIL" +%s); [ "$stop" -gt "$(date +%s)" ] || stop=$(date -d "tomorrow $UNTIL" +%s)
  echo --max-minutes $(( (stop - $(date +%s)) / 60 ))
}
