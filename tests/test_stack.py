"""The stack is real: a Dapr 1.18 sidecar built here loads the resources and reaches its services."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import requests

from tests.conftest import (
    DAPR_BIN,
    ROOT,
    SERVICE,
    SERVICE_URL,
    TASK,
    DaprRun,
    post_run,
    psql,
    redis_cli,
    wait_for,
    wait_for_outcome,
)
from tests.llm_server import LLMServer

PINS = dict(
    line.split("=", 1) for line in (ROOT / "versions.env").read_text().splitlines() if line and not line.startswith("#")
)


def test_dapr_version_shows_the_pinned_cli_and_runtime() -> None:
    out = subprocess.run([str(DAPR_BIN / "dapr"), "--version"], capture_output=True, text=True, check=True).stdout
    assert f"CLI version: {PINS['DAPR_CLI_VERSION']}" in out
    assert f"Runtime version: {PINS['DAPR_RUNTIME_VERSION']}" in out


def test_a_sidecar_loads_every_resource_and_connects_to_placement_and_scheduler(dapr_env: dict[str, str]) -> None:
    sidecar_only = "dapr run --app-id stack-smoke --resources-path ./resources --dapr-listen-addresses 127.0.0.1"
    run = DaprRun(sidecar_only, dapr_env, "smoke")
    try:
        run.wait_for_sidecar()
        metadata = wait_for(
            lambda: (m := run.metadata())["actorRuntime"].get("placement") == "placement: connected" and m,
            15,
            "the sidecar to connect to placement",
        )
        assert metadata["runtimeVersion"] == PINS["DAPR_RUNTIME_VERSION"]
        loaded = {(c["name"], c["type"]) for c in metadata["components"]}
        assert loaded == {
            ("workflow-state", "state.postgresql"),
            ("agent-workflow", "state.redis"),
            ("agent-approvals", "state.redis"),
            ("agent-registry", "state.redis"),
            ("agent-pubsub", "pubsub.redis"),
            ("agent-stream", "pubsub.redis"),
            ("agent-stream-keys", "bindings.redis"),
            ("llm-provider", "conversation.openai"),
        }
        assert metadata["actorRuntime"]["runtimeStatus"] == "RUNNING"
        assert metadata["scheduler"]["connected_addresses"] == ["127.0.0.1:50006"]
    finally:
        run.stop()


PRODUCTION_WARNING = "should not be used in production as an actor state store"


def test_no_sidecar_on_the_resources_warns_that_its_workflow_store_is_unfit_for_production(
    llm: LLMServer, dapr_env: dict[str, str], tmp_path: Path
) -> None:
    """`make run`, `make serve` and `make serve-tool` all load ./resources. Dapr warns as it saves a
    workflow's first step: with a Redis actor state store, as this project had, the same run warns."""
    logs = {}
    redis_store = tmp_path / "resources"
    shutil.copytree(ROOT / "resources", redis_store)
    (redis_store / "workflow-state.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: workflow-state}\n"
        "spec:\n  type: state.redis\n  version: v1\n  metadata:\n"
        "    - {name: redisHost, value: 'localhost:6379'}\n    - {name: actorStateStore, value: 'true'}\n"
    )
    for name, resources in (("shipped", "./resources"), ("redis-store", str(redis_store))):
        run = DaprRun(SERVICE.replace("./resources", resources), dapr_env, f"warnings-{name}")
        try:
            run.wait_until_ready(SERVICE_URL)
            assert wait_for_outcome(post_run(TASK)["status_url"])["runtime_status"] == "COMPLETED"
        finally:
            run.stop()
        logs[name] = [line for line in run.log().splitlines() if "level=warning" in line or "level=error" in line]
    assert [line for line in logs["shipped"] if PRODUCTION_WARNING in line] == [], logs["shipped"]
    assert any(PRODUCTION_WARNING in line for line in logs["redis-store"]), logs["redis-store"]
    print("\nthe service on ./resources warned:\n" + "\n".join(logs["shipped"]))


def test_postgresql_syncs_every_commit_to_disk_and_holds_the_workflows_tables() -> None:
    settings = dict(psql("SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit')"))
    assert settings == {"fsync": "on", "synchronous_commit": "on"}
    # state.postgresql v2 creates them on a sidecar's first start (test_a_sidecar_loads_every_resource...).
    tables = {row[0] for row in psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"state", "dapr_metadata"} <= tables


def test_redis_keeps_an_append_only_file_and_zipkin_answers() -> None:
    assert redis_cli("ping").strip() == "PONG"
    assert redis_cli("config", "get", "appendonly").split() == ["appendonly", "yes"]
    assert requests.get("http://127.0.0.1:9411/health", timeout=5).json()["status"] == "UP"
