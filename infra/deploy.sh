#!/usr/bin/env bash
# Deploy WasmShop to Azure Container Apps. See docs/deployment.md.
#
#   infra/deploy.sh <dev|prod> [all|platform|image|apps|registry]
#
#   platform  everything except the two service apps (first pass: the registry
#             must exist before an image can be pushed to it)
#   image     build infra/Containerfile and push <registry>/wasmshop:$IMAGE_TAG
#             (podman or docker locally; IMAGE_BUILDER=acr builds in ACR Tasks)
#   apps      full deployment including productservice and orderservice
#   registry  print the registry login server (after platform)
#   all       platform, image, apps (default)
#
# Environment: AZURE_RESOURCE_GROUP (default rg-wasmshop-<env>), AZURE_LOCATION
# (default westeurope; used when the group is created), IMAGE_TAG (default: the
# git commit), IMAGE_BUILDER (podman|docker|acr; default: first one found),
# DEPLOYER_PRINCIPAL_ID (default: the object id of the signed-in identity).
# Requires: az (logged in), and podman or docker unless IMAGE_BUILDER=acr.
set -euo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

ENV_NAME="${1:-}"; STEP="${2:-all}"
case "$ENV_NAME" in dev|prod) ;; *) usage ;; esac

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
RG="${AZURE_RESOURCE_GROUP:-rg-wasmshop-$ENV_NAME}"
LOCATION="${AZURE_LOCATION:-westeurope}"
DEPLOYMENT="wasmshop-$ENV_NAME"
PARAMS="infra/parameters/$ENV_NAME.bicepparam"
export IMAGE_TAG="${IMAGE_TAG:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo latest)}"

log() { printf '==> %s\n' "$*" >&2; }

output() { # output <name>: an output of the last deployment, empty if none
  az deployment group show -g "$RG" -n "$DEPLOYMENT" \
    --query "properties.outputs.$1.value" -o tsv 2>/dev/null || true
}

signed_in_object_id() { # the oid claim of an ARM token: works for users and service principals
  az account get-access-token --query accessToken -o tsv | python3 -c '
import base64, json, sys
payload = sys.stdin.read().strip().split(".")[1]
print(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["oid"])'
}

redis_password() { # reuse the stored password: a new one on every run would rotate it
  local vault
  vault="$(az keyvault list -g "$RG" --query "[?tags.application=='wasmshop'] | [0].name" -o tsv 2>/dev/null || true)"
  if [[ -z "$vault" ]]; then
    log "no Key Vault yet: generating the Redis password"
    openssl rand -hex 32
    return
  fi
  az keyvault secret show --vault-name "$vault" --name redis-password --query value -o tsv 2>/dev/null || {
    log "cannot read redis-password from Key Vault $vault (role 'Key Vault Secrets Officer' missing or not yet effective); refusing to rotate it"
    exit 1
  }
}

deploy() { # deploy <true|false>: DEPLOY_APPS
  az group create -n "$RG" -l "$LOCATION" --tags application=wasmshop environment="$ENV_NAME" -o none
  export DEPLOY_APPS="$1"
  export DEPLOYER_PRINCIPAL_ID="${DEPLOYER_PRINCIPAL_ID:-$(signed_in_object_id)}"
  if [[ -z "${DEPLOYER_PRINCIPAL_TYPE:-}" ]]; then
    if [[ "$(az account show --query user.type -o tsv)" == "servicePrincipal" ]]; then
      export DEPLOYER_PRINCIPAL_TYPE=ServicePrincipal
    else
      export DEPLOYER_PRINCIPAL_TYPE=User
    fi
  fi
  REDIS_PASSWORD="$(redis_password)"
  export REDIS_PASSWORD
  log "deploying $PARAMS to $RG (apps: $1, image tag: $IMAGE_TAG)"
  az deployment group create -g "$RG" -n "$DEPLOYMENT" --parameters "$PARAMS" -o none
}

build_image() {
  local server builder
  server="$(output registryLoginServer)"
  [[ -n "$server" ]] || { log "no registry yet: run '$0 $ENV_NAME platform' first"; exit 1; }
  builder="${IMAGE_BUILDER:-$(command -v podman >/dev/null && echo podman || { command -v docker >/dev/null && echo docker; } || echo acr)}"
  log "building $server/wasmshop:$IMAGE_TAG with $builder"
  if [[ "$builder" == acr ]]; then
    az acr build -r "${server%%.*}" -t "wasmshop:$IMAGE_TAG" -f infra/Containerfile . --timeout 5400
    return
  fi
  az acr login -n "${server%%.*}" --expose-token --query accessToken -o tsv |
    "$builder" login "$server" -u 00000000-0000-0000-0000-000000000000 --password-stdin
  "$builder" build -f infra/Containerfile -t "$server/wasmshop:$IMAGE_TAG" .
  "$builder" push "$server/wasmshop:$IMAGE_TAG"
}

report_urls() {
  local product order
  product="$(output productServiceUrl)"; order="$(output orderServiceUrl)"
  log "productservice: $product/api/products"
  log "orderservice:   $order/api/orders"
  if [[ -n "${GITHUB_OUTPUT:-}" ]]; then
    { echo "product_url=$product"; echo "order_url=$order"; } >> "$GITHUB_OUTPUT"
  fi
}

case "$STEP" in
  platform) deploy false ;;
  image) build_image ;;
  apps) deploy true; report_urls ;;
  registry) output registryLoginServer ;;
  all) deploy false; build_image; deploy true; report_urls ;;
  *) usage ;;
esac
