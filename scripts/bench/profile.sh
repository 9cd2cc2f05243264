#!/usr/bin/env bash
# Where the host's CPU goes on one row of the throughput benchmark: loads
# the row exactly as scripts/bench/throughput.sh does (64 connections,
# `loadgen run`), samples the host with `perf record --call-graph dwarf`
# for a few seconds in the middle, and prints
#   - the host's CPU per request (utime + stime from /proc over the run),
#   - the share of samples in each part of the request's life (guest code,
#     instantiation, SQLite reads and writer, HTTP/1 and TCP, ...),
#   - the functions most samples end in.
# This is how docs/performance.md explains the rows that miss their
# targets. Guest functions are named through wasmtime's perf map
# (`--profiler perfmap`). A run is never part of the test suite.
#
# Usage: scripts/bench/profile.sh <row> [seconds]   (default 8)
#        rows: echo read list create order_spread order_hot
# Env:   SKIP_BUILD=1, HOST_BIN=<path>, MANIFEST=<file> as in throughput.sh
#        PERF_DATA=<file>  keep the perf recording there (default: removed)
# Needs: perf (Debian: apt-get install -y linux-perf) and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/bench/rows.sh
usage="usage: scripts/bench/profile.sh <row> [seconds >= 4]; rows: ${ROWS[*]}"
row_name="${1:-}"
secs="${2:-8}"
[[ -n "$row_name" ]] || { echo "$usage" >&2; exit 2; }
[[ " ${ROWS[*]} " == *" $row_name "* ]] || { echo "unknown row '$row_name'; $usage" >&2; exit 2; }
# Sampling starts after loadgen's 3 s warm-up plus 1 s and lasts half the
# measured seconds: fewer than 4 would sample a host that is done.
[[ "$secs" =~ ^[0-9]+$ ]] && (( secs >= 4 )) || { echo "seconds '$secs' must be a whole number of at least 4; $usage" >&2; exit 2; }
command -v perf >/dev/null || { echo "perf is missing: apt-get install -y linux-perf (Debian), then run again" >&2; exit 1; }

source scripts/bench/binaries.sh
set_profile_flag release
build_bench_binaries
bin="${HOST_BIN:-target/release/wasmshop}"
loadgen=target/release/loadgen
require_executables "$bin" "$loadgen"
source scripts/bench/processes.sh
write_bench_manifest

start host "$bin" up --from "$work/spin.toml" --data-dir "$work/data" --log-format json \
  --shutdown-grace-secs 2 --profiler perfmap --listen 127.0.0.1:0
# wasmtime's perf map of the host (/tmp/perf-<pid>.map, ~1 MB) goes with
# everything else however the script ends.
trap 'rm -f "/tmp/perf-$host_pid.map"; cleanup' EXIT
host=$(url_of host)
seed_bench_tenant
set_row_load "$row_name"

data="${PERF_DATA:-$work/perf.data}"
ticks0=$(cpu_ticks "$host_pid")
"$loadgen" run --connections 64 --seconds "$secs" "${row_load[@]}" >"$work/load.json" &
pids+=($!)
load_pid=$!
# After loadgen's 3 s warm-up, sample half of the measured seconds.
sleep 4
sample_secs=$(( secs / 2 ))
echo "sampling the host for ${sample_secs}s..." >&2
perf_status=0
perf record --quiet -F 150 --call-graph dwarf,32768 -p "$host_pid" -o "$data" -- sleep "$sample_secs" 2>"$work/perf.log" ||
  perf_status=$?
# 128 + a signal: the run was interrupted (Ctrl-C reaches perf too).
(( perf_status < 128 )) || exit 130
(( perf_status == 0 )) ||
  { echo "perf record failed (kernel.perf_event_paranoid too high, or no perf for this kernel?):" >&2; cat "$work/perf.log" >&2; exit 1; }
wait "$load_pid"
ticks1=$(cpu_ticks "$host_pid")
perf script -i "$data" -F comm,tid,ip,sym,dso 2>/dev/null >"$work/stacks.txt"

echo "host: $bin; row: $row_name; load generator: $loadgen run (64 connections, one thread), ${secs}s after a 3 s warm-up"
python3 scripts/bench/profile_breakdown.py "$work/stacks.txt" "$work/load.json" \
  "$(( ticks1 - ticks0 ))" "$(getconf CLK_TCK)" "$((secs + 3))"
