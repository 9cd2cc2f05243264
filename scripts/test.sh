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

# Schemathesis, pinned, for tests/tests/rest_contract.rs (it checks every
# response of the running host against openapi.yaml with the configuration
# in tests/schemathesis/). Its own virtualenv under target/ (ignored by git).
SCHEMATHESIS_VERSION=4.32.5
SCHEMATHESIS_VENV=target/venv-schemathesis
if ! "$SCHEMATHESIS_VENV/bin/schemathesis" --version 2>/dev/null | grep -q "version $SCHEMATHESIS_VERSION\$"; then
  python3 -m venv "$SCHEMATHESIS_VENV"
  "$SCHEMATHESIS_VENV/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi
export SCHEMATHESIS="$PWD/$SCHEMATHESIS_VENV/bin/schemathesis"

# Guest components (release: small and fast to compile for wasmtime).
cargo build --target wasm32-wasip2 --release \
  -p product -p order -p messaging-adapter -p capabilities-fixture

# One build of every crate and test target, the `wasmshop` binary the
# end-to-end tests start included. It resolves features exactly as the
# `cargo test` below does, so wasmtime is compiled once (building the host
# alone first would compile it twice, with two feature sets).
cargo build --workspace --exclude capabilities-fixture --all-targets

# Unit tests of every crate (components natively) and the end-to-end tests.
cargo test --workspace --exclude capabilities-fixture

# Infrastructure: Bicep, checkov, workflow and Dapr YAML, Containerfile.
infra/tests/run.sh -q
