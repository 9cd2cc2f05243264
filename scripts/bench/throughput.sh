#!/usr/bin/env bash
# Throughput of the release host against a plain hyper server, measured in
# the same invocation on the same machine (runs differ by up to ~25% between
# invocations on shared 2-core machines; compare the ratios, not raw req/s).
#
#   baseline         loadgen serve: hyper, fixed ~160-byte JSON, no wasm
#   wasm only        GET /fixture/echo: a fresh instance of the capabilities
#                    fixture per request, no storage
#   product read     GET /api/products/pen: the product component reading the
#                    embedded SQLite store
#
# Each row: `loadgen run` with 64 keep-alive connections on one thread
# (like wrk -t1 -c64), 3 s warm-up, then N seconds measured.
# Usage: scripts/bench/throughput.sh [seconds]   (default 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${1:-10}"

rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --release --target wasm32-wasip2 -p product -p capabilities-fixture
cargo build --release -p wasmshop-host -p wasmshop-bench
bin=target/release/wasmshop
loadgen=target/release/loadgen
root=$(pwd)
# Records started processes in `pids` and ends them on exit; `work` is scratch.
source scripts/bench/processes.sh

# Starts "$@" in the background as <name> and records its PID; call it
# directly, not in $(...).
start() {
  local name=$1; shift
  "$@" >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
  printf -v "${name}_pid" %s "$!"
}

# Prints the URL from the `Serving` line of <name>, waiting up to 60 s.
url_of() {
  local name=$1 pid_var="${1}_pid" url
  for _ in $(seq 600); do
    url=$(sed -n 's/^Serving //p' "$work/$name.out" 2>/dev/null | head -1)
    if [[ -n "$url" ]]; then echo "$url"; return; fi
    kill -0 "${!pid_var}" 2>/dev/null || break
    sleep 0.1
  done
  echo "$name did not start; its log:" >&2; cat "$work/$name.log" >&2; exit 1
}

cat >"$work/spin.toml" <<TOML
spin_manifest_version = 2
[application]
name = "bench"
[[trigger.http]]
route = "/api/products/..."
component = "product"
[[trigger.http]]
route = "/fixture/..."
component = "fixture"
[component.product]
source = "$root/target/wasm32-wasip2/release/product.wasm"
key_value_stores = ["default"]
[component.fixture]
source = "$root/target/wasm32-wasip2/release/capabilities_fixture.wasm"
TOML

# Loads URL $2 with `loadgen run`; its JSON line lands in $work/$1.json.
run() {
  "$loadgen" run --url "$2" --seconds "$secs" >"$work/$1.json" &
  pids+=($!)
  wait $!
}

start baseline "$loadgen" serve
start host "$bin" up --from "$work/spin.toml" --listen 127.0.0.1:0 --data-dir "$work/data" --log-format json --shutdown-grace-secs 2
base=$(url_of baseline)
host=$(url_of host)
curl -fsS --max-time 30 -o /dev/null -X POST "$host/api/products" -H 'content-type: application/json' \
  -d '{"id":"pen","name":"Fountain pen","price":12.5,"stock":100,"category":"office"}'
curl -fsS --max-time 30 -o /dev/null "$host/fixture/echo"

echo "measuring ${secs}s per row (after 3s warm-up), 64 connections..." >&2
run baseline "$base/anything"
run echo "$host/fixture/echo"
run product "$host/api/products/pen"
b=$(cat "$work/baseline.json") e=$(cat "$work/echo.json") p=$(cat "$work/product.json")
python3 - "$b" "$e" "$p" <<'PY'
import json, sys
rows = [("baseline (hyper, no wasm)", json.loads(sys.argv[1])),
        ("wasm only (fixture /echo)", json.loads(sys.argv[2])),
        ("product read (wasm + SQLite)", json.loads(sys.argv[3]))]
base = rows[0][1]["rps"] or 1
print(f"{'row':32} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'vs baseline':>12}")
for name, r in rows:
    print(f"{name:32} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors']:>7} {r['rps']/base:>12.3f}")
PY
