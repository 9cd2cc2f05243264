# Sourced by throughput.sh, profile.sh and scale.sh: building and finding
# the binaries a benchmark runs.

# Sets `profile_flag` (cargo's flags) for cargo profile $1, release or
# debug; exits on any other.
set_profile_flag() {
  case "$1" in
    release) profile_flag=(--release) ;;
    debug) profile_flag=() ;;
    *) echo "PROFILE=$1: use release or debug" >&2; exit 2 ;;
  esac
}

# Unless SKIP_BUILD=1: builds the components (always release: the
# manifest names those) and the host and `loadgen` with `profile_flag`.
build_bench_binaries() {
  [[ "${SKIP_BUILD:-0}" != 1 ]] || return 0
  rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
  cargo build --release --target wasm32-wasip2 -p product -p order -p messaging-adapter -p capabilities-fixture
  cargo build "${profile_flag[@]}" -p wasmshop-host -p wasmshop-bench
}

# Exits unless every argument is an executable, saying how to get one.
require_executables() {
  local f
  for f in "$@"; do
    [[ -x "$f" ]] || { echo "$f is not an executable: fix HOST_BIN if you set it, or build it (cargo build ${profile_flag[*]} -p wasmshop-host -p wasmshop-bench), or drop SKIP_BUILD" >&2; exit 1; }
  done
}
