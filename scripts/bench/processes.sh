# Sourced by the benchmark scripts: every process a script starts is
# recorded in `pids`, in the main shell (never inside $(...), whose
# assignments are lost), and ended on exit however the script ends (TERM,
# then KILL after 5 s); the scratch directory `work` is removed with them.
pids=()
work=$(mktemp -d)
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
