"""With DAPR_API_TOKEN set, the sidecar's APIs refuse callers without it, and the agent still works."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import ROOT, SERVICE_URL, TASK, DaprRun, answer_of, page_command, wait_for_outcome
from tests.llm_server import HAIKU, LLMServer

# docs/production.md's commands: a token in the shell, the service with a known sidecar port, and
# a call through it.
EXPORT_TOKEN = page_command("export DAPR_API_TOKEN=")
TOKEN = subprocess.run(
    ["bash", "-c", f"{EXPORT_TOKEN} && printenv DAPR_API_TOKEN"], capture_output=True, text=True
).stdout.strip()
GUARDED_SERVICE = page_command("dapr run --app-id durable-agent-service", containing="--dapr-http-port 3500")
INVOKE = page_command("curl -X POST http://localhost:3500/v1.0/invoke/", containing="$DAPR_API_TOKEN")


@pytest.fixture
def guarded_service(dapr_env: dict[str, str]) -> Iterator[DaprRun]:
    run = DaprRun(GUARDED_SERVICE, {**dapr_env, "DAPR_API_TOKEN": TOKEN}, "service-with-token")
    try:
        run.wait_until_ready(SERVICE_URL)
        yield run
    finally:
        run.stop()


def test_the_sidecar_http_and_grpc_apis_refuse_calls_without_the_token(guarded_service: DaprRun) -> None:
    assert requests.get(guarded_service.sidecar_url("/v1.0/metadata"), timeout=5).status_code == 401
    assert requests.get(guarded_service.sidecar_url("/v1.0/metadata"), headers=guarded_service.auth, timeout=5).ok

    grpc_call = (
        "from dapr.clients import DaprClient\n"
        f"DaprClient(address='127.0.0.1:{guarded_service.sidecar['grpcPort']}').get_metadata()"
    )
    without_token = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", grpc_call], capture_output=True, text=True, timeout=60
    )
    assert without_token.returncode != 0
    assert "UNAUTHENTICATED" in without_token.stderr


def test_run_through_the_sidecar_needs_the_token_and_completes(guarded_service: DaprRun, llm: LLMServer) -> None:
    invoke_url = "http://localhost:3500/v1.0/invoke/durable-agent-service/method/run"
    assert requests.post(invoke_url, json={"task": TASK}, timeout=10).status_code == 401

    # The page's curl, in a shell where DAPR_API_TOKEN is exported as the page says.
    started = subprocess.run(
        ["bash", "-c", INVOKE], env={**os.environ, "DAPR_API_TOKEN": TOKEN}, capture_output=True, text=True
    )

    outcome = wait_for_outcome(json.loads(started.stdout)["status_url"])
    assert outcome["runtime_status"] == "COMPLETED"
    assert answer_of(outcome) == HAIKU
