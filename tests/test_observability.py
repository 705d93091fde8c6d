"""Where to look afterwards: traces in Zipkin, metrics on :9090."""

from __future__ import annotations

import shlex
import subprocess
from typing import Any

import requests

from tests.conftest import ROOT, TASK, DaprRun, post_run, readme_command, wait_for, wait_for_outcome
from tests.llm_server import LLMServer

ZIPKIN = "http://127.0.0.1:9411/api/v2"


def test_zipkin_lists_the_service_with_a_trace_of_the_workflow(service: DaprRun, llm: LLMServer) -> None:
    instance_id = post_run(TASK)["instance_id"]
    assert wait_for_outcome(f"/agent/instances/{instance_id}")["runtime_status"] == "COMPLETED"

    def trace_of_this_run() -> list[dict[str, Any]] | None:
        if "durable-agent-service" not in requests.get(f"{ZIPKIN}/services", timeout=5).json():
            return None
        traces = requests.get(
            f"{ZIPKIN}/traces", params={"serviceName": "durable-agent-service", "limit": 1000}, timeout=5
        ).json()
        for trace in traces:
            tagged = [s for s in trace if s.get("tags", {}).get("durabletask.task.instance_id") == instance_id]
            if any(s["name"].startswith("orchestration||") for s in tagged):
                return trace
        return None

    trace = wait_for(trace_of_this_run, 30, f"the trace of run {instance_id} in Zipkin", interval=1)
    names = {span["name"] for span in trace}
    assert "orchestration||dapr.agents.assistant.workflow" in names
    assert "activity||dapr.agents.assistant.call_llm" in names
    assert "/dapr.proto.runtime.v1.dapr/conversealpha2" in names
    stores = {span["tags"].get("db.name") for span in trace if span["name"].endswith("/savestate")}
    assert "agent-workflow" in stores


def test_metrics_on_9090_expose_runtime_and_workflow_metrics(service: DaprRun, llm: LLMServer) -> None:
    assert wait_for_outcome(post_run(TASK)["status_url"])["runtime_status"] == "COMPLETED"

    metrics = requests.get("http://127.0.0.1:9090/metrics", timeout=5).text

    assert 'dapr_runtime_component_loaded{app_id="durable-agent-service"' in metrics
    assert "dapr_runtime_workflow_operation_count" in metrics
    assert 'dapr_runtime_workflow_execution_count{app_id="durable-agent-service"' in metrics


def test_dapr_workflow_list_shows_the_completed_run(service: DaprRun, llm: LLMServer, dapr_env: dict[str, str]) -> None:
    instance_id = post_run(TASK)["instance_id"]
    assert wait_for_outcome(f"/agent/instances/{instance_id}")["runtime_status"] == "COMPLETED"

    listed = subprocess.run(
        shlex.split(readme_command("dapr workflow list")), cwd=ROOT, env=dapr_env, capture_output=True, text=True
    )

    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == ["NAME", "ID", "STATUS", "AGE"]
    row = next(line.split() for line in listed.stdout.splitlines() if instance_id in line)
    assert row[:3] == ["dapr.agents.Assistant.workflow", instance_id, "COMPLETED"]
