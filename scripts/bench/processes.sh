# Sourced by the benchmark scripts (also gives them `start` and `url_of`,
# below): every process a script starts is
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

# Starts "$@" in the background as <name>, records its PID in `pids` and
# in <name>_pid. Call it directly, never in $(...): a PID recorded in a
# subshell is lost and the process would outlive the script.
start() {
  local name=$1; shift
  "$@" >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
  printf -v "${name}_pid" %s "$!"
}

# Prints the URL from the `Serving` line of <name>, waiting up to 120 s
# (a cold start compiles the components).
url_of() {
  local name=$1 pid_var="${1}_pid" url
  for _ in $(seq 1200); do
    url=$(sed -n 's/^Serving //p' "$work/$name.out" 2>/dev/null | head -1)
    if [[ -n "$url" ]]; then echo "$url"; return; fi
    kill -0 "${!pid_var}" 2>/dev/null || break
    sleep 0.1
  done
  echo "$name did not start; its log:" >&2; tail -n 30 "$work/$name.log" >&2; exit 1
}

# Prints the CPU time process $1 has used so far (utime + stime from
# /proc, in clock ticks: getconf CLK_TCK per second).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
