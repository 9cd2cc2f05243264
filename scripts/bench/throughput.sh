#!/usr/bin/env bash
# Throughput of the host against a plain hyper server measured in the same
# invocation on the same machine (runs differ by up to ~25% between
# invocations on shared 2-core machines: compare the ratios, not raw req/s
# across machines). The rows are those of the performance issue's targets:
#
#   hyper            `loadgen serve`: hyper, fixed ~160-byte JSON, no wasm
#                    (the ceiling every "vs hyper" ratio divides by)
#   wasm only        GET /fixture/echo: a fresh instance of the capabilities
#                    fixture per request, no storage
#   product read     GET /api/products/pen (embedded SQLite store)
#   product list     GET /api/products?limit=10 (tenant of 1,000 products)
#   product create   POST /api/products, new ids, one tenant
#   order, spread    POST /api/orders, 1 item, over 1,000 products
#   order, hot       POST /api/orders, 1 item, all on one product
#   memory           the host's peak resident memory while 256 connections
#                    read a product (sampled from /proc every 0.2 s)
#   warm start       launch to first served request, compile cache present
#
# Load generator: this repository's `loadgen run` (bench/src/main.rs), 64
# keep-alive HTTP/1.1 connections on one thread like `wrk -t1 -c64`, 3 s
# warm-up, then N seconds measured; p50/p99 over every answer. A row with
# any non-2xx answer or broken connection is FAILED whatever its speed.
#
# Usage: scripts/bench/throughput.sh [seconds]   (default 10)
# Env:   PROFILE=debug   the dev-profile host and loadgen (quick check that
#                        the script works; the figures mean nothing)
#        SKIP_BUILD=1    build nothing, use the binaries already built
#        HOST_BIN=<path> measure another host binary (e.g. a release build of
#                        an older commit, for a before/after pair of runs)
#        MANIFEST=<file> the spin.toml to serve (an older host may refuse
#                        keys the current one added); .wasm paths starting
#                        with target/ are this checkout's
# A run is never part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${1:-10}"
profile="${PROFILE:-release}"
source scripts/bench/binaries.sh
set_profile_flag "$profile"
build_bench_binaries
bin="${HOST_BIN:-target/$profile/wasmshop}"
loadgen="target/$profile/loadgen"
require_executables "$bin" "$loadgen"
# Records started processes in `pids` and ends them on exit; `work` is scratch.
source scripts/bench/processes.sh

source scripts/bench/rows.sh
write_bench_manifest

host_args=(up --from "$work/spin.toml" --data-dir "$work/data" --log-format json --shutdown-grace-secs 2)
start baseline "$loadgen" serve
start host "$bin" "${host_args[@]}" --listen 127.0.0.1:0
base=$(url_of baseline)
host=$(url_of host)

seed_bench_tenant

# Loads with `loadgen run`: row name $1, connections $2, then its flags;
# the JSON line lands in $work/$1.json.
run() {
  local name=$1 connections=$2; shift 2
  echo "  $name..." >&2
  "$loadgen" run --connections "$connections" --seconds "$secs" "$@" >"$work/$name.json" &
  pids+=($!)
  wait $!
}

echo "measuring ${secs}s per row after a 3 s warm-up:" >&2
run hyper 64 --url "$base/anything"
for name in "${ROWS[@]}"; do
  set_row_load "$name"
  run "$name" 64 "${row_load[@]}"
done

# Peak resident memory (VmRSS) of the host while 256 connections read,
# with its split at the peak (the three add up to VmRSS): anonymous (heap,
# stacks, pooled linear memories, read cache), file-backed (the binary, the
# database file the SQLite writer maps; reclaimable page cache) and shared
# (the memfd images of the components' initial memories, counted once per
# pooled instance slot that maps a page of them), and the proportional set
# size (Pss, from smaps_rollup), which counts each physical page once. The
# row runs after the write rows, so the file part grows with what they
# wrote: docs/performance.md, "Why the memory row missed".
rss_kib() { awk '/^(VmRSS|RssAnon|RssFile|RssShmem):/ {printf "%s ", $2}' "/proc/$host_pid/status" 2>/dev/null; }
set_row_load read
"$loadgen" run --connections 256 --seconds "$secs" "${row_load[@]}" >"$work/memory.json" &
mem_pid=$!
pids+=("$mem_pid")
peak=0 peak_anon=0 peak_file=0 peak_shmem=0 peak_pss=0
while kill -0 "$mem_pid" 2>/dev/null; do
  read -r r anon file shmem <<<"$(rss_kib || echo 0 0 0 0)"
  if (( ${r:-0} > peak )); then
    peak=$r peak_anon=${anon:-0} peak_file=${file:-0} peak_shmem=${shmem:-0}
    peak_pss=$(awk '/^Pss:/ {print $2}' "/proc/$host_pid/smaps_rollup" 2>/dev/null || echo 0)
  fi
  sleep 0.2
done
wait "$mem_pid"
echo "{\"peak_rss_kib\": $peak, \"anon_kib\": $peak_anon, \"file_kib\": $peak_file, \"shmem_kib\": $peak_shmem, \"pss_kib\": ${peak_pss:-0}}" >"$work/memory_rss.json"

# Warm start: the same data directory (compile cache present), a fixed
# free port, time from launch to the first 200 of GET /api/products.
kill -TERM "$host_pid"
wait "$host_pid" 2>/dev/null || true
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
t0=$(date +%s%N)
start warm "$bin" "${host_args[@]}" --listen "127.0.0.1:$port"
until curl -fsS --max-time 5 -o /dev/null "http://127.0.0.1:$port/api/products" 2>/dev/null; do
  kill -0 "$warm_pid" 2>/dev/null || { echo "the host did not restart; its log:" >&2; tail -n 30 "$work/warm.log" >&2; exit 1; }
  (( $(date +%s%N) - t0 < 120000000000 )) || { echo "the host did not serve within 120 s of its restart" >&2; exit 1; }
  sleep 0.002
done
echo "{\"warm_start_ms\": $(( ($(date +%s%N) - t0) / 1000000 ))}" >"$work/warm.json"

echo "host: $bin ($profile), embedded backend; load generator: $loadgen run (64 connections, one thread)"
python3 - "$work" "$secs" <<'PY'
import json, os, sys
work, secs = sys.argv[1], sys.argv[2]
def load(name):
    with open(os.path.join(work, name + ".json")) as f:
        return json.loads(f.read())
hyper = load("hyper")
base = hyper["rps"] or 1
# (file, label, minimum ratio to hyper, minimum req/s, maximum p99 ms)
rows = [
    ("hyper", "hyper, fixed JSON (ceiling)", None, None, None),
    ("echo", "wasm only (fixture /echo)", 0.40, None, None),
    ("read", "GET /api/products/{id}", 0.25, None, 5),
    ("list", "GET /api/products?limit=10", 0.15, None, None),
    ("create", "POST /api/products (1 tenant)", None, 3000, 50),
    ("order_spread", "POST /api/orders, 1,000 products", None, 2000, 100),
    ("order_hot", "POST /api/orders, one product", None, 500, 200),
]
print(f"measured {secs} s per row after a 3 s warm-up")
print(f"{'row':34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non2xx':>7} {'errors':>7} {'vs hyper':>9}  {'target':28} verdict")
failed = missed = 0
for key, label, ratio, rps, p99 in rows:
    r = load(key)
    got = r["rps"] / base
    target = []
    ok = True
    if ratio is not None:
        target.append(f">= {ratio:.2f} x hyper")
        ok &= got >= ratio
    if rps is not None:
        target.append(f">= {rps} req/s")
        ok &= r["rps"] >= rps
    if p99 is not None:
        target.append(f"p99 <= {p99} ms")
        ok &= r["p99_ms"] <= p99
    bad = r.get("non_2xx", 0) + r["errors"]
    verdict = "FAILED (non-2xx/errors)" if bad else ("-" if not target else ("ok" if ok else "missed"))
    failed += bool(bad)
    missed += bool(target) and not ok and not bad
    print(f"{label:34} {r['rps']:>8.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r.get('non_2xx', 0):>7} {r['errors']:>7} {got:>9.3f}  {'; '.join(target):28} {verdict}")
mem, mem_run = load("memory_rss"), load("memory")
mib = mem["peak_rss_kib"] / 1024
bad = mem_run.get("non_2xx", 0) + mem_run["errors"]
verdict = "FAILED (non-2xx/errors)" if bad else ("ok" if mib <= 150 else "missed")
failed += bool(bad); missed += (not bad) and mib > 150
print(f"{'resident memory, 256 connections':34} {mem_run['rps']:>8.0f} {mem_run['p50_ms']:>8.2f} {mem_run['p99_ms']:>8.2f} {mem_run.get('non_2xx', 0):>7} {mem_run['errors']:>7} {mem_run['rps']/base:>9.3f}  {'<= 150 MB':28} {verdict} (peak {mib:.0f} MB: {mem['anon_kib']/1024:.0f} anonymous, {mem['file_kib']/1024:.0f} file-backed, {mem['shmem_kib']/1024:.0f} shared; Pss {mem['pss_kib']/1024:.0f} MB)")
warm = load("warm")["warm_start_ms"]
print(f"{'warm start (compile cache present)':34} {'':>8} {'':>8} {'':>8} {'':>7} {'':>7} {'':>9}  {'<= 50 ms':28} {'ok' if warm <= 50 else 'missed'} ({warm} ms)")
missed += warm > 50
print(f"rows failed: {failed}; targets missed: {missed}")
sys.exit(1 if failed else 0)
PY
