#!/usr/bin/env bash
# The whole test suite, on a fresh machine that has only Rust (and root for
# apt, which later backends use): installs what it needs, builds the
# components and the host once, then runs every Rust and infra test.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2

# The Redis backend's tests start their own redis-server on a free port.
command -v redis-server >/dev/null ||
  (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server)

# Guest components (release: small and fast to compile for wasmtime).
cargo build --target wasm32-wasip2 --release \
  -p product -p order -p messaging-adapter -p capabilities-fixture

# The host binary the end-to-end tests start; `cargo test` below reuses
# this build of wasmtime.
cargo build -p wasmshop-host

# Unit tests of every crate (components natively) and the end-to-end tests.
cargo test --workspace --exclude capabilities-fixture

# Infrastructure: Bicep, checkov, workflow and Dapr YAML, Containerfile.
infra/tests/run.sh -q
