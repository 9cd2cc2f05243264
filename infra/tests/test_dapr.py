"""Dapr resources for `dapr run` (issue 6, infra/dapr) and the runtime config
the host reads: names, scopes and resiliency targets line up with spin.toml,
infra/runtime-config/dapr.toml and infra/dapr/README.md."""
from __future__ import annotations

import tomllib

from conftest import INFRA, REPO, fenced_commands, flags_of, load_yaml, spin_manifest, wasmshop_up_commands

DAPR = INFRA / "dapr"


def resources() -> dict[str, dict]:
    return {load_yaml(p)["metadata"]["name"]: load_yaml(p) for p in sorted(DAPR.glob("*.yaml"))}


def app_ids() -> set[str]:
    return {c["tool"]["wasmshop"]["dapr_app_id"] for c in spin_manifest()["component"].values()}


def runtime_config() -> dict:
    return tomllib.loads((INFRA / "runtime-config" / "dapr.toml").read_text())


def test_all_dapr_yaml_parses() -> None:
    for path in DAPR.glob("*.y*ml"):
        doc = load_yaml(path)
        assert doc["apiVersion"].startswith("dapr.io/") and doc["kind"] in {"Component", "Resiliency"}, path


def test_components_on_redis_scoped_to_both_apps() -> None:
    res = resources()
    config = runtime_config()
    store = res[config["key_value_store"]["default"]["store"]]
    pubsub = res[config["messaging"]["product-pubsub"]["pubsub"]]
    assert store["spec"]["type"] == "state.redis"
    assert pubsub["spec"]["type"] == "pubsub.redis"
    for component in (store, pubsub):
        assert set(component["scopes"]) == app_ids()
        meta = {m["name"]: m for m in component["spec"]["metadata"]}
        assert "secretKeyRef" in meta["redisPassword"] and "value" not in meta["redisPassword"]
        assert component["auth"]["secretStore"] in res


def test_runtime_config_labels_match_spin_toml() -> None:
    config = runtime_config()
    labels = {l for c in spin_manifest()["component"].values() for l in c.get("key_value_stores", [])}
    clients = {m for c in spin_manifest()["component"].values()
               for m in c.get("tool", {}).get("wasmshop", {}).get("messaging_clients", [])}
    assert set(config["key_value_store"]) == labels
    assert set(config["messaging"]) == clients
    assert all(v["type"] == "dapr" for v in [*config["key_value_store"].values(), *config["messaging"].values()])


def test_resiliency_targets_product_service_and_pubsub() -> None:
    res = [d for d in resources().values() if d["kind"] == "Resiliency"]
    assert len(res) == 1
    spec = res[0]["spec"]
    policies = spec["policies"]
    product = spec["targets"]["apps"]["productservice"]
    assert {"timeout", "retry", "circuitBreaker"} <= set(product)
    pubsub = spec["targets"]["components"]["product-pubsub"]
    assert {"inbound", "outbound"} <= set(pubsub)
    assert "retry" in pubsub["inbound"]  # without it daprd never redelivers
    kinds = {"timeout": "timeouts", "retry": "retries", "circuitBreaker": "circuitBreakers"}
    targets = [product, pubsub["inbound"], pubsub["outbound"],
               *[d for c in spec["targets"]["components"].values() for d in c.values()]]
    for target in targets:
        for kind, name in target.items():
            assert name in policies[kinds[kind]], f"{kind} {name} undefined"
    for breaker in policies["circuitBreakers"].values():
        assert breaker["trip"].startswith("consecutiveFailures")
    assert "productservice" in app_ids()


def test_readme_dapr_run_commands() -> None:
    commands = [t for t in fenced_commands(DAPR / "README.md") if t[:2] == ["dapr", "run"]]
    assert len(commands) == 2
    components = spin_manifest()["component"]
    seen = set()
    for tokens in commands:
        dapr = flags_of(tokens[2:])
        (up,) = wasmshop_up_commands([tokens])
        host = flags_of(up[2:])
        assert dapr["resources-path"] == "infra/dapr"
        assert host["runtime-config-file"] == "infra/runtime-config/dapr.toml"
        assert host["from"] == "spin.toml"
        component = host["component-id"]
        assert components[component]["tool"]["wasmshop"]["dapr_app_id"] == dapr["app-id"]
        assert host["listen"].rsplit(":", 1)[1] == dapr["app-port"]
        seen.add(dapr["app-id"])
    assert seen == app_ids()
    assert (REPO / "infra" / "runtime-config" / "dapr.toml").exists()
