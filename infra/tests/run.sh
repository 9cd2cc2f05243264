#!/usr/bin/env bash
# Infra tests: Bicep parses (pycep-parser), checkov finds nothing, workflow and
# Dapr YAML parse and agree, the Containerfile agrees with README/host/spin.toml.
# Creates the virtualenv .venv-infra at the repository root on first use.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${INFRA_VENV:-$ROOT/.venv-infra}"
REQ="$ROOT/infra/tests/requirements.txt"
CONSTRAINTS="$ROOT/infra/tests/constraints.txt"
PYTHON="${PYTHON:-python3}"

stamp="$VENV/.requirements.sha256"
want="$(cat "$REQ" "$CONSTRAINTS" | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "infra tests: installing tools into $VENV" >&2
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$REQ" -c "$CONSTRAINTS"
  echo "$want" > "$stamp"
fi

cd "$ROOT"
exec "$VENV/bin/python" -m pytest infra/tests -p no:cacheprovider "$@"
