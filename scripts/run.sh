#!/usr/bin/env bash
# Builds everything and serves the app on the embedded backend (no server
# needed) at http://127.0.0.1:3000. Extra arguments go to `wasmshop up`.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2
cargo build --target wasm32-wasip2 --release -p product -p order -p messaging-adapter
exec cargo run -p wasmshop-host -- up --from spin.toml --listen 127.0.0.1:3000 "$@"
