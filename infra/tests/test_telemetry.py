"""Issue 16: the hosts' OpenTelemetry traces and logs reach Application
Insights through the Container Apps environment's managed agent, and every
query of the AI report reads a table and columns that this telemetry fills,
for the role names the hosts report (docs/observability.md, "Application
Insights")."""
from __future__ import annotations

import re

import pytest

from conftest import REPO, bicep, spin_manifest

# The Application Insights columns filled from OTLP data, per table
# (server/consumer spans -> requests; client/producer spans -> dependencies;
# log records -> traces; error records naming an exception -> exceptions).
COLUMNS = {
    "requests": {"timestamp", "name", "success", "duration", "resultCode", "url",
                 "cloud_RoleName", "operation_Id", "customDimensions"},
    "dependencies": {"timestamp", "name", "success", "duration", "resultCode", "type", "target",
                     "data", "cloud_RoleName", "operation_Id", "customDimensions"},
    "traces": {"timestamp", "message", "severityLevel", "cloud_RoleName", "operation_Id",
               "customDimensions"},
    "exceptions": {"timestamp", "type", "outerMessage", "cloud_RoleName", "operation_Id",
                   "customDimensions"},
}

KQL = {
    "where", "and", "or", "not", "in", "has", "startswith", "endswith", "contains", "true", "false",
    "ago", "summarize", "by", "count", "countif", "avg", "round", "percentile", "any", "max", "min",
    "sum", "tostring", "toint", "order", "desc", "asc", "take", "extend", "project",
}

WORKFLOW = "modules/ai-report-workflow.bicep"


def queries() -> dict[str, str]:
    return bicep(WORKFLOW)["variables"]["queries"]["value"]


def columns_used(query: str) -> tuple[str, set[str]]:
    """The table a query reads and the names it uses that are neither KQL
    nor its own aliases (`alias = ...`)."""
    table = query.split("|", 1)[0].strip()
    body = re.sub(r"\$\{[^}]*\}", " ", query)  # Bicep interpolations
    body = re.sub(r'"[^"]*"', " ", body)  # string literals
    body = body.split("|", 1)[1]
    aliases = set(re.findall(r"([A-Za-z_]\w*)\s*=(?!=)", body))
    words = set(re.findall(r"[A-Za-z_]\w*", body))
    return table, words - KQL - aliases


@pytest.mark.parametrize("name", sorted(queries()))
def test_each_query_reads_a_table_and_columns_our_telemetry_fills(name: str) -> None:
    table, used = columns_used(queries()[name])
    assert table in COLUMNS, f"{name} reads '{table}', which the hosts' telemetry does not fill"
    assert used <= COLUMNS[table], f"{name}: {sorted(used - COLUMNS[table])} are not columns of {table} we fill"


def test_the_queries_cover_every_table_and_name_the_dapr_app_ids() -> None:
    tables = {columns_used(q)[0] for q in queries().values()}
    assert tables == set(COLUMNS)
    roles = set(re.findall(r'"([^"]+)"', bicep(WORKFLOW)["variables"]["services"]["value"]))
    app_ids = {c["tool"]["wasmshop"]["dapr_app_id"] for c in spin_manifest()["component"].values()}
    assert roles == app_ids == {"productservice", "orderservice"}
    for name, query in queries().items():
        assert "cloud_RoleName in (${services})" in query, name


def test_the_host_emits_what_the_tables_are_made_from() -> None:
    """Span kinds and the semantic-convention attributes Application
    Insights builds those columns from, and the role name: service.name is
    the component's Dapr app id."""
    spans = (REPO / "host" / "src" / "telemetry" / "spans.rs").read_text()
    for kind in ("server", "client", "producer", "consumer"):
        assert f'otel.kind = "{kind}"' in spans, kind
    for attribute in ("http.route", "http.response.status_code", "db.system", "db.operation.name",
                      "messaging.system", "messaging.destination.name", "server.address"):
        assert f"{attribute} =" in spans, attribute
    export = (REPO / "host" / "src" / "telemetry" / "mod.rs").read_text()
    assert "c.dapr_app_id()" in export
    logs = (REPO / "host" / "src" / "telemetry" / "export.rs").read_text()
    assert '"exception.type"' in logs and '"exception.message"' in logs


def test_the_environment_agent_sends_traces_and_logs_to_application_insights() -> None:
    env = bicep("modules/container-apps-environment.bicep")["resources"]["environment"]
    props = env["config"]["properties"]
    assert props["appInsightsConfiguration"]["connectionString"]
    otel = props["openTelemetryConfiguration"]
    assert otel["tracesConfiguration"]["destinations"] == ["appInsights"]
    assert otel["logsConfiguration"]["destinations"] == ["appInsights"]
    assert "metricsConfiguration" not in otel, "Application Insights takes no metrics from the agent"
    app = bicep("modules/service-app.bicep")["resources"]["app"]["config"]["properties"]
    (container,) = app["template"]["containers"]
    env_vars = {e["name"]: e.get("value") for e in container["env"]}
    assert env_vars["OTEL_METRICS_EXPORTER"] == "none"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env_vars, "the environment injects the agent's endpoint"


def test_docs_say_where_each_table_comes_from() -> None:
    doc = (REPO / "docs" / "observability.md").read_text()
    for table in COLUMNS:
        assert f"`{table}`" in doc, table
