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
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# Starts "$@" in the background and prints the URL from its `Serving` line.
start() {
  local log="$work/$1.log"; shift
  "$@" >"$log.out" 2>"$log" &
  pids+=($!)
  for _ in $(seq 600); do
    if grep -q '^Serving ' "$log.out" 2>/dev/null; then
      sed -n 's/^Serving //p' "$log.out" | head -1; return
    fi
    sleep 0.1
  done
  echo "did not start: $*" >&2; cat "$log" >&2; exit 1
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

run() { "$loadgen" run --url "$1" --seconds "$secs"; }

base=$(start baseline "$loadgen" serve)
host=$(start host "$bin" up --from "$work/spin.toml" --listen 127.0.0.1:0 --data-dir "$work/data" --log-format json)
curl -fsS -o /dev/null -X POST "$host/api/products" -H 'content-type: application/json' \
  -d '{"id":"pen","name":"Fountain pen","price":12.5,"stock":100,"category":"office"}'
curl -fsS -o /dev/null "$host/fixture/echo"

echo "measuring ${secs}s per row (after 3s warm-up), 64 connections..." >&2
b=$(run "$base/anything")
e=$(run "$host/fixture/echo")
p=$(run "$host/api/products/pen")
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
