#!/usr/bin/env bash
# Scale: does a request cost the same whatever one tenant holds? Starts the
# host on the embedded backend (fresh temporary data directory, free port),
# then `loadgen scale` (bench/src/scale.rs) fills ONE tenant to each size
# with products AND orders (1 item each, spread over the products) and, at
# each size, prints median and p99 of the API's requests, the largest
# stored value, and creates/s of 32 writers in one tenant vs 32 tenants.
# The last lines give each row's growth from the smallest to the largest
# size, and the one-tenant/32-tenant ratio, next to their targets
# (growth <= 1.3, largest value <= 64 KiB, one/32 >= 0.7).
#
# Usage: scripts/bench/scale.sh [SIZES...]     (default 1000 10000 100000)
# Env:   PROFILE=debug      use the dev-profile host and loadgen (faster to
#                           build; absolute numbers are not comparable)
#        SKIP_BUILD=1       build nothing, use the binaries already built
#        MANIFEST=path      run another manifest (default spin.toml), e.g.
#                           one pointing at saved .wasm files to compare builds
#        SCALE_MAX_MINUTES  stop after this long (default 180)
#        LOADGEN_ARGS       extra `loadgen scale` flags, e.g. "--samples 100"
# A run is never part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes=("$@")
[[ ${#sizes[@]} -gt 0 ]] || sizes=(1000 10000 100000)
profile="${PROFILE:-release}"
max_minutes="${SCALE_MAX_MINUTES:-180}"
source scripts/bench/binaries.sh
set_profile_flag "$profile"

# Records started processes in `pids` and ends them on exit; `work` is scratch.
source scripts/bench/processes.sh

build_bench_binaries
bin="target/$profile/wasmshop"
loadgen="target/$profile/loadgen"
require_executables "$bin" "$loadgen"
manifest="${MANIFEST:-spin.toml}"
[[ -f "$manifest" ]] || { echo "MANIFEST=$manifest: no such file" >&2; exit 1; }
[[ -n "${MANIFEST:-}" ]] || for c in product order; do
  [[ -f "target/wasm32-wasip2/release/$c.wasm" ]] || { echo "target/wasm32-wasip2/release/$c.wasm is missing: cargo build --target wasm32-wasip2 --release -p product -p order -p messaging-adapter" >&2; exit 1; }
done

"$bin" up --from "$manifest" --listen 127.0.0.1:0 --data-dir "$work/data" \
  --log-format json --shutdown-grace-secs 2 >"$work/host.out" 2>"$work/host.log" &
host_pid=$!
pids+=("$host_pid")
url=""
for _ in $(seq 1200); do  # 120 s: a cold start compiles both components
  url=$(sed -n 's/^Serving //p' "$work/host.out" | head -1)
  [[ -n "$url" ]] && break
  kill -0 "$host_pid" 2>/dev/null || break
  sleep 0.1
done
if [[ -z "$url" ]]; then
  echo "the host did not start within 120 s; its log:" >&2
  tail -n 30 "$work/host.log" >&2
  exit 1
fi

echo "host: $bin ($profile) at $url running $manifest, embedded backend, data in $work/data"
echo "load generator: $loadgen scale (bench/src/scale.rs: hyper HTTP/1.1 client on one thread)"
echo "sizes: ${sizes[*]}; stops after $max_minutes min"
started=$(date +%s)
# shellcheck disable=SC2086 # LOADGEN_ARGS is a list of flags
"$loadgen" scale --url "$url" --db "$work/data/wasmshop.db" \
  --sizes "$(IFS=,; echo "${sizes[*]}")" --max-minutes "$max_minutes" ${LOADGEN_ARGS:-} &
loadgen_pid=$!
pids+=("$loadgen_pid")
status=0
wait "$loadgen_pid" || status=$?
echo "total time: $(( $(date +%s) - started )) s"
if [[ $status != 0 ]]; then
  echo "loadgen scale failed (exit $status); last lines of the host log:" >&2
  tail -n 10 "$work/host.log" >&2
fi
exit "$status"
