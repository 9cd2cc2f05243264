#!/usr/bin/env bash
# Two host builds on one row, in interleaved pairs: for each pair, the
# baseline then the candidate, each on a fresh host and data directory,
# the row loaded for N seconds after a 2 s warm-up exactly as
# throughput.sh loads it (scripts/bench/rows.sh). Prints, per run, req/s,
# p99, non-2xx and the host's CPU per request (utime + stime from /proc
# over warm-up and load), then the mean of each side and the ratio
# candidate / baseline. On a shared 2-core machine single runs differ by
# up to ~25%: this is the script for telling a 10-30% change from noise.
#
# Usage: BASE_HOST_BIN=<old binary> scripts/bench/pairs.sh <row> [pairs] [seconds]
#        (rows: echo read list create order_spread order_hot; default 3
#        pairs of 10 s)
# Env:   HOST_BIN=<path>        the candidate (default: this checkout's
#                               release build)
#        BASE_MANIFEST=<file>   the baseline's spin.toml (default: MANIFEST,
#        MANIFEST=<file>        else spin.toml); .wasm paths starting with
#                               target/ are this checkout's
#        SKIP_BUILD=1           build nothing
# A run is never part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
row="${1:?usage: BASE_HOST_BIN=<binary> scripts/bench/pairs.sh <row> [pairs] [seconds]}"
pairs="${2:-3}"
secs="${3:-10}"
base_bin="${BASE_HOST_BIN:?set BASE_HOST_BIN to the baseline host binary (e.g. a release build of an older commit)}"
source scripts/bench/binaries.sh
set_profile_flag release
build_bench_binaries
bin="${HOST_BIN:-target/release/wasmshop}"
loadgen=target/release/loadgen
require_executables "$bin" "$base_bin" "$loadgen"
source scripts/bench/processes.sh
source scripts/bench/rows.sh
host=http://127.0.0.1:0 # set per run; here only to check the row name
set_row_load "$row"

# One run: a fresh host of binary $2 serving manifest $3; appends
# "<rps> <p99 ms> <non-2xx + errors> <CPU µs per request>" to $work/$1.
run_once() {
  local side=$1 binary=$2 manifest=$3 n=$4
  MANIFEST="$manifest" write_bench_manifest
  start "host$n" "$binary" up --from "$work/spin.toml" --data-dir "$work/data$n" \
    --log-format json --shutdown-grace-secs 2 --listen 127.0.0.1:0
  local pid_var="host${n}_pid"
  local pid=${!pid_var}
  host=$(url_of "host$n")
  seed_bench_tenant 2>/dev/null
  set_row_load "$row"
  local t0 t1
  t0=$(cpu_ticks "$pid")
  "$loadgen" run --connections 64 --seconds "$secs" --warmup 2 "${row_load[@]}" >"$work/load$n.json"
  t1=$(cpu_ticks "$pid")
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  python3 - "$work/load$n.json" "$((t1 - t0))" "$(getconf CLK_TCK)" "$((secs + 2))" >>"$work/$side" <<'PY'
import json, sys
load = json.load(open(sys.argv[1]))
ticks, hz, seconds = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rps = load["rps"]
cpu_us = ticks / hz * 1e6 / (rps * seconds) if rps else float("nan")
print(f'{rps:.0f} {load["p99_ms"]:.1f} {load["non_2xx"] + load["errors"]} {cpu_us:.0f}')
PY
  echo "  $side: $(tail -1 "$work/$side")" >&2
}

base_manifest="${BASE_MANIFEST:-${MANIFEST:-spin.toml}}"
manifest="${MANIFEST:-spin.toml}"
echo "row $row: $pairs pairs of ${secs}s; baseline $base_bin, candidate $bin" >&2
for i in $(seq "$pairs"); do
  echo "pair $i (req/s, p99 ms, non-2xx, CPU µs/request):" >&2
  run_once base "$base_bin" "$base_manifest" "b$i"
  run_once candidate "$bin" "$manifest" "c$i"
done

python3 - "$work/base" "$work/candidate" "$row" <<'PY'
import sys
def load(path):
    return [list(map(float, line.split())) for line in open(path)]
base, cand, row = load(sys.argv[1]), load(sys.argv[2]), sys.argv[3]
def mean(rows, i):
    return sum(r[i] for r in rows) / len(rows)
print(f"row {row}            req/s (each run)                mean     CPU µs/req   non-2xx")
for name, runs in (("baseline ", base), ("candidate", cand)):
    each = ", ".join(f"{r[0]:.0f}" for r in runs)
    print(f"{name}  {each:<32} {mean(runs, 0):8.0f}  {mean(runs, 3):10.0f}  {sum(r[2] for r in runs):6.0f}")
print(f"candidate / baseline: req/s x{mean(cand, 0) / mean(base, 0):.2f}, CPU per request x{mean(cand, 3) / mean(base, 3):.2f}")
bad = sum(r[2] for r in base + cand)
if bad:
    sys.exit(f"{bad:.0f} non-2xx answers or errors: the figures are not the row's")
PY
