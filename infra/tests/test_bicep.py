"""Bicep: every file parses with pycep-parser, and the templates carry what the
seed's deployment asks for (issue 8)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import INFRA, REPO, bicep, bicep_files, bicepparam, spin_manifest


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_bicep_parses(path: Path) -> None:
    parsed = bicep(str(path.relative_to(INFRA)))
    assert parsed.get("resources") or parsed.get("modules"), f"{path} declares nothing"


def test_every_module_is_used_by_main() -> None:
    used = {m["detail"]["path"] for m in bicep("main.bicep")["modules"].values()}
    on_disk = {f"modules/{p.name}" for p in (INFRA / "modules").glob("*.bicep")}
    assert on_disk == used


def test_api_versions_are_recent() -> None:
    """No resource on an API version older than 2019 (Logic Apps' current GA)."""
    for path in bicep_files():
        for name, res in bicep(str(path.relative_to(INFRA))).get("resources", {}).items():
            assert res["api_version"] >= "2019-05-01", f"{path.name}:{name} {res['api_version']}"


def _required_params() -> set[str]:
    params = bicep("main.bicep")["parameters"]
    return {n for n, p in params.items() if p.get("default") is None}


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_parameter_file_matches_main(env: str) -> None:
    path = INFRA / "parameters" / f"{env}.bicepparam"
    assert "using '../main.bicep'" in path.read_text().splitlines()
    values = bicepparam(path)
    declared = set(bicep("main.bicep")["parameters"])
    assert set(values) <= declared, f"unknown params: {set(values) - declared}"
    assert _required_params() <= set(values), f"missing: {_required_params() - set(values)}"
    assert values["environmentName"] == f"'{env}'"


def _sizing_table(heading: str) -> dict[str, list[str]]:
    """The sizing table under `heading` in docs/deployment.md."""
    text = (REPO / "docs" / "deployment.md").read_text()
    assert heading in text, f"docs/deployment.md lost its '{heading}' table"
    section = text.split(heading, 1)[1].split("####", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in {"ProductService", "OrderService", "Redis"}:
            rows[cells[0]] = cells
    assert set(rows) == {"ProductService", "OrderService", "Redis"}, rows
    return rows


@pytest.mark.parametrize("env,heading", [("dev", "#### Development Environment"), ("prod", "#### Production Environment")])
def test_sizes_follow_the_documented_table(env: str, heading: str) -> None:
    rows = _sizing_table(heading)
    values = bicepparam(INFRA / "parameters" / f"{env}.bicepparam")
    for service in ("ProductService", "OrderService"):
        _, _, replicas, cpu, memory = rows[service]
        lo, hi = replicas.split("-")
        assert values["serviceMinReplicas"] == lo and values["serviceMaxReplicas"] == hi
        assert float(values["serviceCpu"].strip("'")) == float(cpu)
        assert values["serviceMemory"] == f"'{memory}'"
    _, _, _, cpu, memory = rows["Redis"]
    assert float(values["redisCpu"].strip("'")) == float(cpu)
    assert values["redisMemory"] == f"'{memory}'"


def test_dapr_app_ids_match_spin_toml() -> None:
    components = spin_manifest()["component"]
    from_manifest = {c["tool"]["wasmshop"]["dapr_app_id"] for c in components.values()}
    assert set(bicep("main.bicep")["variables"]["daprAppIds"]["value"]) == from_manifest
    # each app runs the component whose dapr_app_id is its name
    for mod in ("productService", "orderService"):
        params = bicep("main.bicep")["modules"][mod]["config"]["config"]["params"]
        component = params["componentId"]
        index = params["name"]["operator"]["operands"]["operand_2"]
        app_id = bicep("main.bicep")["variables"]["daprAppIds"]["value"][index]
        assert components[component]["tool"]["wasmshop"]["dapr_app_id"] == app_id


def test_service_app_dapr_probes_and_scaling() -> None:
    mod = bicep("modules/service-app.bicep")
    app = mod["resources"]["app"]["config"]["properties"]
    port = mod["variables"]["port"]["value"]
    assert port == 8080
    dapr = app["configuration"]["dapr"]
    assert dapr["enabled"] is True and dapr["appId"] == "name" and dapr["appPort"] == "port"
    # only the fields ACA supports (docs/azure-container-apps.md)
    assert set(dapr) <= {"enabled", "appId", "appPort", "appProtocol", "httpMaxRequestSize",
                         "httpReadBufferSize", "enableApiLogging", "logLevel"}
    ingress = app["configuration"]["ingress"]
    assert ingress["external"] is True and ingress["allowInsecure"] is False
    container = app["template"]["containers"][0]
    probes = {p["type"]: p["httpGet"]["path"] for p in container["probes"]}
    assert probes == {"Startup": "/healthz", "Liveness": "/healthz", "Readiness": "/readyz"}
    env = {e["name"] for e in container["env"]}
    assert "WASMSHOP_COMPONENT_ID" in env
    rule = app["template"]["scale"]["rules"][0]["http"]["metadata"]["concurrentRequests"]
    assert rule["function"]["parameters"]["value_to_convert"] == "concurrentRequests"
    assert mod["parameters"]["concurrentRequests"]["default"] == 50
    assert app["configuration"]["registries"][0]["identity"] == "identityId"


def test_dapr_components_on_redis_with_secret_refs_and_scopes() -> None:
    mod = bicep("modules/container-apps-environment.bicep")
    env = mod["resources"]["environment"]["config"]["properties"]
    assert env["daprAIConnectionString"] == "appInsightsConnectionString"
    by_name = {r["config"]["name"]: r["config"]["properties"] for r in mod["resources"].values()
               if r["type"] == "Microsoft.App/managedEnvironments/daprComponents"}
    assert by_name["statestore"]["componentType"] == "state.redis"
    assert by_name["product-pubsub"]["componentType"] == "pubsub.redis"
    for name in ("statestore", "product-pubsub"):
        props = by_name[name]
        assert props["scopes"] == "daprAppIds"
        meta = {m["name"]: m for m in props["metadata"]}
        assert meta["redisPassword"] == {"name": "redisPassword", "secretRef": "redis-password"}
        assert "value" not in meta["redisPassword"]
    store = by_name["secretstore"]
    assert store["componentType"] == "secretstores.azure.keyvault"
    assert "azureClientId" in {m["name"] for m in store["metadata"]}


def test_redis_is_internal_tcp_with_persistence() -> None:
    mod = bicep("modules/redis.bicep")
    app = mod["resources"]["redis"]["config"]["properties"]
    ingress = app["configuration"]["ingress"]
    assert ingress["external"] is False and ingress["transport"] == "tcp"
    assert mod["variables"]["port"]["value"] == 6379
    args = " ".join(app["template"]["containers"][0]["args"])
    assert "--appendonly yes" in args and "--save 60 1" in args
    assert app["template"]["volumes"][0]["storageType"] == "AzureFile"
    assert app["template"]["scale"] == {"minReplicas": 1, "maxReplicas": 1}


def test_report_workflow_schedule_queries_and_report_shape() -> None:
    mod = bicep("modules/ai-report-workflow.bicep")
    definition = mod["resources"]["workflow"]["config"]["properties"]["definition"]
    (trigger,) = definition["triggers"].values()
    assert trigger["type"] == "Recurrence" and trigger["recurrence"]["frequency"] == "Hour"
    assert mod["parameters"]["intervalHours"]["default"] == 6
    queries = mod["variables"]["queries"]["value"]
    assert set(queries) == {"requestPerformance", "failures", "exceptions", "dependencies", "logWarnings"}
    assert "dapr" in queries["dependencies"]
    prompt = mod["variables"]["systemPrompt"]["value"]
    for key in ("analysis_summary", "critical_issues", "recommendations", "category", "severity",
                "service", "issue", "recommendation", "expected_impact", "implementation_effort",
                "metrics_to_track"):
        assert f'"{key}"' in prompt, key
    actions = definition["actions"]
    for name, action in actions.items():
        auth = action["inputs"]["authentication"]
        auth = mod["variables"][auth]["value"] if isinstance(auth, str) else auth
        assert auth["type"] == "ManagedServiceIdentity", name
    assert actions["Write_report_blob"]["inputs"]["method"] == "PUT"
    roles = {mod["variables"][role_var(r)]["value"] for r in mod["resources"].values()
             if r["type"] == "Microsoft.Authorization/roleAssignments"}
    assert roles == {
        "43d0d8ad-25c7-4714-9337-8ba259a9fe05",  # Monitoring Reader (App Insights query API)
        "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd",  # Cognitive Services OpenAI User
        "ba92f5b4-2d11-453d-a403-e96b0029c9fe",  # Storage Blob Data Contributor
    }


def role_var(resource: dict) -> str:
    return resource["config"]["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]


def test_apps_identity_gets_acr_pull_and_key_vault_secrets_user() -> None:
    registry = bicep("modules/registry.bicep")
    assert registry["variables"][role_var(registry["resources"]["acrPull"])]["value"] == "7f951dca-d0ab-4f1e-b1d6-61a1e1a88e8c"
    vault = bicep("modules/keyvault.bicep")
    assert vault["variables"][role_var(vault["resources"]["secretsUser"])]["value"] == "4633458b-17de-408a-b874-0445c86b69e6"


def test_no_keys_where_identity_works() -> None:
    oai = bicep("modules/openai.bicep")["resources"]["account"]["config"]["properties"]
    assert oai["disableLocalAuth"] is True
    reports = bicep("modules/reports-storage.bicep")["resources"]["storage"]["config"]["properties"]
    assert reports["allowSharedKeyAccess"] is False
    for module in ("modules/reports-storage.bicep", "modules/redis.bicep"):
        account = bicep(module)["resources"]["storage"]["config"]["properties"]
        assert account["allowBlobPublicAccess"] is False and account["minimumTlsVersion"] == "TLS1_2"
    acr = bicep("modules/registry.bicep")["resources"]["registry"]["config"]["properties"]
    assert acr["adminUserEnabled"] is False
    kv = bicep("modules/keyvault.bicep")["resources"]["vault"]["config"]["properties"]
    assert kv["enableRbacAuthorization"] is True
    text = "\n".join(p.read_text() for p in bicep_files())
    # the only listKeys() is the Azure Files mount, which supports nothing else
    assert len(re.findall(r"listKeys\(", text)) == 1
