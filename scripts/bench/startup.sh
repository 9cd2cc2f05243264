#!/usr/bin/env bash
# Cold vs warm start: time from launching `wasmshop up` to the first served
# request (GET /api/products), with an empty compile cache (cold) and with
# the cache the cold run left (warm). Prints both and their ratio.
# Usage: scripts/bench/startup.sh [runs]   (WASMSHOP_BIN to pick a binary)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${1:-5}"
bin="${WASMSHOP_BIN:-target/release/wasmshop}"
[[ -x "$bin" ]] || bin=target/debug/wasmshop
[[ -x "$bin" ]] || { echo "build the host first: cargo build --release -p wasmshop-host" >&2; exit 1; }
for c in product order; do
  [[ -f target/wasm32-wasip2/release/$c.wasm ]] || { echo "build the components first: cargo build --target wasm32-wasip2 --release -p product -p order" >&2; exit 1; }
done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
data=$(mktemp -d)
# The host under test; its PID lives in the main shell (never inside
# $(...), whose assignments are lost), so the exit trap can always end it.
pid=""
cleanup() {
  if [[ -n "$pid" ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -rf "$data"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Sets `ms` to the milliseconds from launch to the first 200 from the
# product component; gives up after 120 s.
first_request_ms() {
  local start end
  start=$(date +%s%N)
  "$bin" up --from spin.toml --listen "127.0.0.1:$port" --data-dir "$data" --log-format json 2>/dev/null >/dev/null &
  pid=$!
  until curl -fsS --max-time 5 -o /dev/null "http://127.0.0.1:$port/api/products" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null || (( $(date +%s%N) - start > 120000000000 )); then
      echo "the host did not serve within 120 s (or exited); run it by hand to see why: $bin up --from spin.toml" >&2
      exit 1
    fi
    sleep 0.005
  done
  end=$(date +%s%N)
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  pid=""
  ms=$(( (end - start) / 1000000 ))
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

cold=(); warm=()
for _ in $(seq "$runs"); do
  rm -rf "$data"/*
  first_request_ms; cold+=("$ms")
  first_request_ms; warm+=("$ms")
done
c=$(printf '%s\n' "${cold[@]}" | median)
w=$(printf '%s\n' "${warm[@]}" | median)
echo "binary: $bin"
echo "cold start (empty compile cache), median of $runs: ${c} ms   [${cold[*]}]"
echo "warm start (cached compiled components), median of $runs: ${w} ms   [${warm[*]}]"
python3 -c "print(f'warm/cold ratio: {$w/$c:.3f}  (cold is {$c/$w:.1f}x slower)')"
