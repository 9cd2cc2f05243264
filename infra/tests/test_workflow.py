"""The GitHub Actions workflow: runs the README's test command, builds and
pushes the image to ACR, deploys the Bicep to a chosen environment, and logs in
to Azure with OIDC only."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO, fenced_commands, load_yaml

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))


def workflow() -> dict:
    (path,) = WORKFLOWS
    return load_yaml(path)


def triggers(wf: dict) -> dict:
    return wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true


def readme_test_command() -> str:
    """The README's test command (the lead's README names ./scripts/test.sh)."""
    readme = REPO / "README.md"
    if readme.exists():
        for tokens in fenced_commands(readme):
            if tokens and re.search(r"(^|/)scripts/test\.sh$", tokens[0]):
                return " ".join(tokens)
    return "./scripts/test.sh"


def steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def test_workflows_parse() -> None:
    assert WORKFLOWS
    for path in WORKFLOWS:
        assert isinstance(load_yaml(path)["jobs"], dict), path


def test_triggers_main_and_manual_environment_choice() -> None:
    on = triggers(workflow())
    assert on["push"]["branches"] == ["main"]
    choice = on["workflow_dispatch"]["inputs"]["environment"]
    assert choice["type"] == "choice" and set(choice["options"]) == {"dev", "prod"}
    assert choice["default"] == "dev"


def test_runs_the_readme_test_command() -> None:
    runs = [s.get("run", "").strip() for s in steps(workflow()["jobs"]["test"])]
    assert readme_test_command() in runs


def test_deploy_builds_pushes_and_deploys_with_oidc() -> None:
    wf = workflow()
    deploy = wf["jobs"]["deploy"]
    assert deploy["needs"] == "test"
    assert deploy["permissions"]["id-token"] == "write"
    assert "dev" in deploy["environment"]["name"] and "inputs.environment" in deploy["environment"]["name"]
    login = [s for s in steps(deploy) if str(s.get("uses", "")).startswith("azure/login@")]
    assert len(login) == 1
    assert set(login[0]["with"]) == {"client-id", "tenant-id", "subscription-id"}  # no creds/secret
    build = [s for s in steps(deploy) if str(s.get("uses", "")).startswith("docker/build-push-action@")]
    assert build and build[0]["with"]["push"] is True
    assert build[0]["with"]["file"] == "infra/Containerfile"
    assert (REPO / build[0]["with"]["file"]).exists()
    runs = "\n".join(s.get("run", "") for s in steps(deploy))
    assert "infra/deploy.sh" in runs and " apps" in runs and " platform" in runs


def test_no_stored_passwords() -> None:
    text = "\n".join(p.read_text() for p in WORKFLOWS)
    assert "secrets." not in text, "the workflow must not depend on stored secrets"
    assert not re.search(r"(?i)password\s*:", text)


def test_deploy_script_uses_the_parameter_files() -> None:
    script = (REPO / "infra" / "deploy.sh").read_text()
    assert 'PARAMS="infra/parameters/$ENV_NAME.bicepparam"' in script
    for env in ("dev", "prod"):
        assert (REPO / "infra" / "parameters" / f"{env}.bicepparam").exists()
