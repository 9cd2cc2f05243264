#!/usr/bin/env bash
# What telemetry costs on the hottest read, `GET /api/products/{id}`:
# a baseline host binary (built before telemetry existed) and this one,
# measured in interleaved rounds in one invocation, because two runs on a
# shared 2-core machine differ by up to ~25% and only a ratio taken
# side by side means anything. Variants, each against hyper in its round:
#
#   baseline       BASELINE_BIN (required), its own manifest (BASELINE_MANIFEST,
#                  default spin.toml), the same .wasm files
#   no log         this host, RUST_LOG=warn: no access log, exporter off
#   access log     this host as shipped: access log on (info), exporter off
#   export 1.0     access log on, and OTLP/HTTP export of every span and
#                  log record (OTEL_TRACES_SAMPLER=always_on) to a local
#                  receiver that accepts and discards (a Python server
#                  answering 200 with an empty protobuf body)
#
# Usage: BASELINE_BIN=/path/to/old/wasmshop scripts/bench/telemetry.sh [seconds] [rounds]
#        (defaults 5 and 3). Builds nothing: build the release host and
#        loadgen first (cargo build --release -p wasmshop-host -p wasmshop-bench).
# Prints per variant the median req/s over rounds, its ratio to hyper, and
# its ratio to the baseline; the access log's dropped lines are counted by
# wasmshop_telemetry_dropped_total on /metrics (printed at the end).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${1:-5}"
rounds="${2:-3}"
: "${BASELINE_BIN:?set BASELINE_BIN to a host binary built before the change (e.g. a release build of an older commit)}"
bin="${HOST_BIN:-target/release/wasmshop}"
loadgen="${LOADGEN:-target/release/loadgen}"
for f in "$bin" "$loadgen" "$BASELINE_BIN"; do
  [[ -x "$f" ]] || { echo "$f is missing: build it first (see the usage line at the top of this script)" >&2; exit 1; }
done
root=$(pwd)
source scripts/bench/processes.sh

sed "s|= \"target/|= \"$root/target/|g" spin.toml >"$work/spin.toml"
sed "s|= \"target/|= \"$root/target/|g" "${BASELINE_MANIFEST:-spin.toml}" >"$work/baseline.toml"

# The OTLP sink: 200 with an empty body (a valid empty Export*ServiceResponse).
cat >"$work/sink.py" <<'PY'
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
print(f"Serving http://127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
PY
start sink python3 "$work/sink.py"
start baseline_hyper "$loadgen" serve
sink=$(url_of sink)
hyper=$(url_of baseline_hyper)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -A metrics
up() { # up <name> <binary> <manifest> [env...]
  local name=$1 binary=$2 manifest=$3; shift 3
  metrics[$name]="127.0.0.1:$(free_port)"
  start "$name" env "$@" "$binary" up --from "$manifest" --data-dir "$work/data-$name" \
    --log-format json --shutdown-grace-secs 2 --listen 127.0.0.1:0 --metrics-listen "${metrics[$name]}"
}
up baseline "$BASELINE_BIN" "$work/baseline.toml"
up nolog "$bin" "$work/spin.toml" RUST_LOG=warn
up access "$bin" "$work/spin.toml"
up export "$bin" "$work/spin.toml" OTEL_EXPORTER_OTLP_ENDPOINT="$sink" \
  OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf OTEL_TRACES_SAMPLER=always_on OTEL_METRICS_EXPORTER=none
variants=(baseline nolog access export)
declare -A url
for v in "${variants[@]}"; do
  url[$v]=$(url_of "$v")
  curl -fsS --max-time 60 -o /dev/null -X POST "${url[$v]}/api/products" -H 'x-tenant-id: bench' \
    -H 'content-type: application/json' \
    -d '{"id":"pen","name":"Fountain pen","price":12.5,"stock":100,"category":"office"}'
done

for r in $(seq "$rounds"); do
  echo "round $r/$rounds (${secs} s per row after a 3 s warm-up)" >&2
  "$loadgen" run --connections 64 --seconds "$secs" --url "$hyper/anything" >"$work/hyper.$r.json" &
  pids+=($!); wait $!
  for v in "${variants[@]}"; do
    "$loadgen" run --connections 64 --seconds "$secs" --url "${url[$v]}/api/products/pen" \
      --header 'x-tenant-id: bench' >"$work/$v.$r.json" &
    pids+=($!); wait $!
  done
done

echo "host: $bin, baseline: $BASELINE_BIN; load generator: $loadgen run (64 connections, one thread); GET /api/products/pen"
python3 - "$work" "$rounds" "${variants[@]}" <<'PY'
import json, os, statistics, sys
work, rounds, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def load(name, r):
    with open(os.path.join(work, f"{name}.{r}.json")) as f:
        return json.loads(f.read())
rows = {}
for v in ["hyper"] + variants:
    runs = [load(v, r) for r in range(1, rounds + 1)]
    rows[v] = dict(
        rps=statistics.median(x["rps"] for x in runs),
        p99=statistics.median(x["p99_ms"] for x in runs),
        bad=sum(x.get("non_2xx", 0) + x["errors"] for x in runs),
        ratio=statistics.median(x["rps"] / max(h["rps"], 1) for x, h in zip(runs, [load("hyper", r) for r in range(1, rounds + 1)])),
    )
labels = {"baseline": "baseline binary", "nolog": "this host, RUST_LOG=warn",
          "access": "this host, access log on", "export": "this host, OTLP export 1.0"}
print(f"{'variant':30} {'req/s':>8} {'p99 ms':>8} {'vs hyper':>9} {'vs baseline':>12} {'non2xx+err':>11}")
for v in ["hyper"] + variants:
    x = rows[v]
    vs_base = x["ratio"] / rows["baseline"]["ratio"] if v != "hyper" else float("nan")
    print(f"{labels.get(v, 'hyper (ceiling)'):30} {x['rps']:>8.0f} {x['p99']:>8.2f} {x['ratio']:>9.3f} {vs_base:>12.3f} {x['bad']:>11}")
PY
for v in access export; do
  echo "$v: $(curl -fsS --max-time 5 "http://${metrics[$v]}/metrics" | grep '^wasmshop_telemetry_dropped' | tr '\n' ' ')"
done
exit 0
