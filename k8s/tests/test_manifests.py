"""deploy/ checked before it is applied: against the API server's schemas, and against resources/.

The API server of `make k8s-up` knows Kubernetes' schemas and those of Dapr's CRDs (installed by
Dapr's chart), and `--dry-run=server --validate=strict` refuses a field it does not know. The
cluster's Dapr resources must say what the local ones say, but for what comes from Secrets.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from k8s.tests.conftest import PINS, ROOT, kubectl

DEPLOY = ROOT / "deploy"
APP_ID = "durable-agent-service"
TOOL_APP_ID = "durable-agent-tool"
MCP_APP_ID = "durable-agent-mcp"
# What the cluster's copy reads from a Secret where the local one has a literal or an environment
# variable; locally Redis and PostgreSQL have no password.
KINDS = [
    *("Component", "ConfigMap", "Configuration", "Deployment", "MCPServer"),
    *("Resiliency", "Service", "ServiceAccount", "StatefulSet"),
]
FROM_SECRETS = {
    **{"redisHost": ("redis", "host"), "redisPassword": ("redis", "password"), "key": ("openai", "api-key")},
    **{"connectionString": ("postgres", "connection-string"), "password": ("postgres", "password")},
}


def rendered(folder: Path, namespace: str) -> list[dict[str, Any]]:
    """What `kubectl apply -k folder` would apply, moved to `namespace`."""
    documents = [d for d in yaml.safe_load_all(kubectl("kustomize", str(folder)).stdout) if d]
    for document in documents:
        document["metadata"]["namespace"] = namespace
    return documents


def dry_run(*documents: dict[str, Any]) -> Any:
    manifests = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(documents)})
    return kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", stdin=manifests, check=False)


def with_a_typo(document: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """`document` with the first field of its spec (or metadata) misspelt, and that field's path."""
    misspelt = copy.deepcopy(document)
    if "data" in misspelt:  # a ConfigMap: its data is a map of any keys, the field that holds it is not
        misspelt["datax"] = misspelt.pop("data")
        return misspelt, "datax"
    section = "spec" if "spec" in misspelt else "metadata"
    field = next(k for k in misspelt[section] if k not in ("name", "namespace"))
    misspelt[section][f"{field}x"] = misspelt[section].pop(field)
    return misspelt, f"{section}.{field}x"


def by_name(folder: Path) -> dict[str, dict[str, Any]]:
    documents = (yaml.safe_load(path.read_text()) for path in sorted(folder.glob("*.yaml")))
    return {d["metadata"]["name"]: d for d in documents}


def test_every_manifest_passes_the_api_servers_schemas(namespace: str) -> None:
    documents = rendered(DEPLOY, namespace) + rendered(DEPLOY / "stand-ins", namespace)
    kinds = sorted({d["kind"] for d in documents})

    checked = dry_run(*documents)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert kinds == sorted(KINDS)
    assert checked.stdout.count("(server dry run)") == len(documents)


def test_a_misspelt_field_in_any_manifest_fails_the_check(namespace: str) -> None:
    documents = rendered(DEPLOY, namespace) + rendered(DEPLOY / "stand-ins", namespace)

    for document in documents:
        misspelt, field = with_a_typo(document)
        checked = dry_run(misspelt)
        assert checked.returncode != 0, f"{document['kind']}/{document['metadata']['name']}: {field} was accepted"
        assert "unknown field" in checked.stderr and field.split(".")[-1] in checked.stderr, checked.stderr


def test_the_clusters_dapr_components_say_what_the_local_ones_say_but_for_secrets() -> None:
    local, cluster = by_name(ROOT / "resources"), by_name(DEPLOY / "dapr")
    components = [name for name, resource in local.items() if resource["kind"] == "Component"]

    assert sorted(components) == sorted(n for n, r in cluster.items() if r["kind"] == "Component")
    for name in components:
        here, there = local[name], cluster[name]
        assert (there["spec"]["type"], there["spec"]["version"]) == (here["spec"]["type"], here["spec"]["version"])
        assert there["scopes"] == [APP_ID, TOOL_APP_ID, MCP_APP_ID], name
        assert there["auth"] == {"secretStore": "kubernetes"}, name
        items = {item["name"]: item for item in there["spec"]["metadata"]}
        for item in here["spec"]["metadata"]:
            if item["name"] in FROM_SECRETS:
                continue
            assert items.pop(item["name"]) == item, f"{name}: {item['name']}"
        for field, remaining in items.items():
            secret, key = FROM_SECRETS[field]  # a field the local component lacks comes from a Secret
            assert remaining == {"name": field, "secretKeyRef": {"name": secret, "key": key}}, f"{name}: {field}"


def test_the_clusters_resiliency_and_configuration_are_the_local_ones() -> None:
    local_resiliency = yaml.safe_load((ROOT / "resources" / "resiliency.yaml").read_text())
    cluster = by_name(DEPLOY / "dapr")
    local_config = yaml.safe_load((ROOT / "config" / "dapr-config.yaml").read_text())
    cluster_config = cluster["agent-config"]

    assert cluster[local_resiliency["metadata"]["name"]]["spec"] == local_resiliency["spec"]
    # Only the address of Zipkin differs: a Service name in the cluster.
    assert cluster_config["spec"]["tracing"]["zipkin"].pop("endpointAddress") == "http://zipkin:9411/api/v2/spans"
    local_config["spec"]["tracing"]["zipkin"].pop("endpointAddress")
    assert cluster_config["spec"] == local_config["spec"]


def test_the_clusters_mcp_servers_are_local_ones_each_served_over_http_by_a_service_of_deploy() -> None:
    local = {d["metadata"]["name"] for d in yaml.safe_load_all((ROOT / "mcp" / "servers.yaml").read_text())}
    rendered_deploy = yaml.safe_load_all(kubectl("kustomize", str(DEPLOY)).stdout)
    services = {d["metadata"]["name"] for d in rendered_deploy if d["kind"] == "Service"}
    cluster = list(yaml.safe_load_all((DEPLOY / "mcp-servers.yaml").read_text()))

    assert cluster and {d["metadata"]["name"] for d in cluster} <= local
    for server in cluster:
        url = server["spec"]["endpoint"]["streamableHTTP"]["url"]
        assert url.split("/")[2] in services, url  # an address in the agent's namespace
        assert server["scopes"] == [MCP_APP_ID]


@pytest.mark.parametrize(
    ("manifest", "app_id"), [("agent.yaml", APP_ID), ("tool-agent.yaml", TOOL_APP_ID), ("mcp-agent.yaml", MCP_APP_ID)]
)
def test_each_deployment_has_probes_limits_a_non_root_user_and_time_for_a_step(manifest: str, app_id: str) -> None:
    (deployment,) = [d for d in yaml.safe_load_all((DEPLOY / manifest).read_text()) if d["kind"] == "Deployment"]
    template = deployment["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    (container,) = template["spec"]["containers"]

    assert annotations["dapr.io/app-id"] == app_id and annotations["dapr.io/app-port"] == "8001"
    assert annotations["dapr.io/config"] == "agent-config"
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    assert {"readinessProbe", "livenessProbe", "resources"} <= set(container)
    # Room for one step: the LLM's timeout in resiliency.yaml is 60 s.
    assert template["spec"]["terminationGracePeriodSeconds"] > 60


def test_the_zipkin_stand_in_runs_the_pinned_version() -> None:
    images = yaml.safe_load((DEPLOY / "stand-ins" / "kustomization.yaml").read_text())["images"]

    assert {i["name"]: i["newTag"] for i in images}["openzipkin/zipkin"] == PINS["ZIPKIN_VERSION"]


def test_the_postgresql_stand_in_runs_the_pinned_major_version() -> None:
    images = yaml.safe_load((DEPLOY / "stand-ins" / "kustomization.yaml").read_text())["images"]
    manifests = yaml.safe_load_all((DEPLOY / "stand-ins" / "postgres.yaml").read_text())
    (postgres,) = [d for d in manifests if d["kind"] == "StatefulSet"]
    major = PINS["POSTGRESQL_MAJOR"]

    assert {i["name"]: i["newTag"] for i in images}["postgres"] == major
    (container,) = postgres["spec"]["template"]["spec"]["containers"]
    assert f"/usr/lib/postgresql/{major}/bin" in container["args"][0]
    assert container["readinessProbe"]["exec"]["command"][0].startswith(f"/usr/lib/postgresql/{major}/bin/")
