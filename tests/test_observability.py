"""Where to look afterwards: traces in Zipkin, metrics on :9090."""

from __future__ import annotations

import itertools
import shlex
import subprocess

import requests

from service_runner.tracing_warnings import ALREADY_INSTRUMENTED, NO_CONTEXT
from tests.conftest import (
    ROOT,
    SERVICE_URL,
    TASK,
    TRACED_SERVICE,
    WORKFLOW_SPAN,
    DaprRun,
    page_command,
    post_run,
    trace_of_run,
    wait_for_outcome,
)
from tests.llm_server import HAIKU, LLMServer

WORKFLOW_LIST = page_command("python scripts/workflow_history.py --app-id")
WORKFLOW_HISTORY = page_command("python scripts/workflow_history.py <instance-id>")


def test_with_agent_tracing_one_trace_shows_the_request_the_workflow_the_llm_call_and_the_state_calls(
    llm: LLMServer, dapr_env: dict[str, str]
) -> None:
    traced = DaprRun(TRACED_SERVICE, dapr_env, "traced-service")
    try:
        traced.wait_until_ready(SERVICE_URL)
        instance_id = post_run(TASK)["instance_id"]
        assert wait_for_outcome(f"/agent/instances/{instance_id}")["runtime_status"] == "COMPLETED"
        trace = trace_of_run(instance_id)  # while the sidecar runs: it may drop spans it holds at exit
    finally:
        traced.stop()
    # The agent's settings did not reach the sidecar: it tried no OTLP export of its own.
    assert "traces export" not in traced.log()
    # Nor did dapr-agents' warnings about conditions it handles reach the log (service_runner/tracing_warnings.py).
    assert ALREADY_INSTRUMENTED not in traced.log() and NO_CONTEXT not in traced.log()

    by_service: dict[str, set[str]] = {}
    for span in trace:
        by_service.setdefault(span["localEndpoint"]["serviceName"], set()).add(span["name"])
    sidecar, agent = by_service["durable-agent-service"], by_service["assistant"]
    assert "post /run" in agent  # the HTTP request that started it all is the root
    assert WORKFLOW_SPAN in sidecar
    assert "activity||dapr.agents.assistant.call_llm" in sidecar
    assert "workflowactivity.dapr.agents.assistant.call_llm" in agent
    assert "/dapr.proto.runtime.v1.dapr/conversealpha2" in sidecar
    stores = {span["tags"].get("db.name") for span in trace if span["name"].endswith("/savestate")}
    assert "agent-workflow" in stores
    # The agent's own span of the LLM call carries the token counts the model reported.
    llm_call = next(s for s in trace if s["name"] == "chat" and "llm.token_count.completion" in s.get("tags", {}))
    assert llm_call["tags"]["llm.token_count.completion"] == str(len(HAIKU.split()))
    assert int(llm_call["tags"]["llm.token_count.prompt"]) > 0


def test_metrics_on_9090_expose_runtime_and_workflow_metrics(service: DaprRun, llm: LLMServer) -> None:
    assert wait_for_outcome(post_run(TASK)["status_url"])["runtime_status"] == "COMPLETED"

    metrics = requests.get("http://127.0.0.1:9090/metrics", timeout=5).text

    assert 'dapr_runtime_component_loaded{app_id="durable-agent-service"' in metrics
    assert "dapr_runtime_workflow_operation_count" in metrics
    assert 'dapr_runtime_workflow_execution_count{app_id="durable-agent-service"' in metrics


def test_the_readmes_workflow_list_shows_the_completed_run(
    service: DaprRun, llm: LLMServer, dapr_env: dict[str, str]
) -> None:
    instance_id = post_run(TASK)["instance_id"]
    assert wait_for_outcome(f"/agent/instances/{instance_id}")["runtime_status"] == "COMPLETED"

    listed = subprocess.run(shlex.split(WORKFLOW_LIST), cwd=ROOT, env=dapr_env, capture_output=True, text=True)

    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == ["NAME", "ID", "STATUS", "AGE"]
    row = next(line.split() for line in listed.stdout.splitlines() if instance_id in line)
    assert row[:3] == ["dapr.agents.Assistant.workflow", instance_id, "COMPLETED"]


def test_the_readmes_history_command_shows_each_step_of_the_run(
    service: DaprRun, llm: LLMServer, dapr_env: dict[str, str]
) -> None:
    instance_id = post_run(TASK)["instance_id"]
    assert wait_for_outcome(f"/agent/instances/{instance_id}")["runtime_status"] == "COMPLETED"
    history_of = shlex.split(WORKFLOW_HISTORY)[:-1]

    shown = subprocess.run([*history_of, instance_id], cwd=ROOT, env=dapr_env, capture_output=True, text=True)
    unknown = subprocess.run([*history_of, "no-such-run"], cwd=ROOT, env=dapr_env, capture_output=True, text=True)

    assert shown.returncode == 0, shown.stderr
    header, *lines = shown.stdout.splitlines()
    columns = [header.index(title) for title in ("TYPE", "NAME", "AT (ms)", "DETAILS")]
    rows = [[line[a:b].strip() for a, b in itertools.pairwise([0, *columns, None])] for line in lines]
    events = [(kind, name, details) for _, kind, name, _, details in rows]
    started = next(event for event in events if event[0] == "ExecutionStarted")
    assert started[1] == "dapr.agents.Assistant.workflow" and TASK in started[2]
    steps = [name.removeprefix("dapr.agents.Assistant.") for kind, name, _ in events if kind == "TaskScheduled"]
    assert steps == ["record_initial_entry", "load_tools", "call_llm", "finalize_workflow"]
    assert events[-1][0] == "ExecutionCompleted" and events[-1][2].startswith("COMPLETED, output:")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().endswith("answered NOT_FOUND: workflow instance 'no-such-run' not found")
