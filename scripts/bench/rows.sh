# Sourced by throughput.sh and profile.sh (after processes.sh): the app
# they serve and the load of each row, so a profile loads exactly what the
# throughput row measured.

# Writes $work/spin.toml: the repository's app with absolute sources
# (from ${MANIFEST:-spin.toml}), plus the capabilities fixture at
# /fixture/... for the wasm-only row.
write_bench_manifest() {
  local root
  root=$(pwd)
  sed "s|= \"target/|= \"$root/target/|g" "${MANIFEST:-spin.toml}" >"$work/spin.toml"
  cat >>"$work/spin.toml" <<TOML

[[trigger.http]]
route = "/fixture/..."
component = "fixture"
[component.fixture]
source = "$root/target/wasm32-wasip2/release/capabilities_fixture.wasm"
TOML
}

# Seeds tenant `bench` of the host at $host: `pen`, `hot` (stock for any
# number of orders) and p0..p999 (the spread-orders row); fails the
# script on a non-2xx.
seed_bench_tenant() {
  echo "seeding tenant bench: pen, hot, p0..p999..." >&2
  local body
  for body in \
    '{"id":"pen","name":"Fountain pen","price":12.5,"stock":100,"category":"office"}' \
    '{"id":"hot","name":"Hot item","price":1,"stock":2000000000,"category":"hot"}'; do
    curl -fsS --max-time 60 -o /dev/null -X POST "$host/api/products" -H 'x-tenant-id: bench' \
      -H 'content-type: application/json' -d "$body"
  done
  seq 0 999 | xargs -P 8 -I{} curl -fsS --max-time 60 -o /dev/null -X POST "$host/api/products" \
    -H 'x-tenant-id: bench' -H 'content-type: application/json' \
    -d '{"id":"p{}","name":"Product {}","price":2,"stock":2000000000,"category":"spread"}' &
  pids+=($!)
  wait $!
  curl -fsS --max-time 30 -o /dev/null "$host/fixture/echo"
}

# The rows, in the order the throughput table prints them.
ROWS=(echo read list create order_spread order_hot)

# Sets `row_load` to the `loadgen run` flags (URL, method, headers, body)
# of row $1 against the host at $host; exits on an unknown row.
set_row_load() {
  local tenant=(--header 'x-tenant-id: bench')
  case "$1" in
    echo) row_load=(--url "$host/fixture/echo") ;;
    read) row_load=(--url "$host/api/products/pen" "${tenant[@]}") ;;
    list) row_load=(--url "$host/api/products?limit=10" "${tenant[@]}") ;;
    create) row_load=(--url "$host/api/products" --method POST --header 'x-tenant-id: bench-create'
      --body '{"id":"new-{n}","name":"New {n}","price":3,"stock":5,"category":"new"}') ;;
    order_spread) row_load=(--url "$host/api/orders" --method POST "${tenant[@]}"
      --body '{"customerId":"bench","items":[{"productId":"p{n%1000}","quantity":1}]}') ;;
    order_hot) row_load=(--url "$host/api/orders" --method POST "${tenant[@]}"
      --body '{"customerId":"bench","items":[{"productId":"hot","quantity":1}]}') ;;
    *) echo "unknown row '$1'; the rows are: ${ROWS[*]}" >&2; exit 2 ;;
  esac
}
