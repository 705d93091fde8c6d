"""Print a workflow run's history, one event per line, by asking the running sidecar.

`dapr workflow history` in the 1.16.5 CLI built here reads the history through the actor state
API, which a 1.18 sidecar refuses for workflow actors (ERR_ACTOR_TYPE_RESERVED), so it prints an
empty table. This asks the sidecar's workflow API instead, as the CLI does from 1.17 on.

Usage: python scripts/workflow_history.py <instance-id> [app-id]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc
from dapr.ext.workflow._durabletask.internal import orchestration_pb2 as orchestration
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2 as workflows
from dapr.ext.workflow._durabletask.internal import orchestrator_service_pb2_grpc as workflows_grpc
from google.protobuf.message import Message


def sidecar_grpc_port(app_id: str) -> int:
    listed = subprocess.run(["dapr", "list", "-o", "json"], capture_output=True, text=True).stdout
    sidecars = json.loads(listed) if listed.lstrip().startswith("[") else []
    for sidecar in sidecars:
        if sidecar["appId"] == app_id:
            return int(sidecar["grpcPort"])
    sys.exit(f"No sidecar of {app_id!r} is running (see `dapr list`): start the service, then ask again.")


def clip(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def describe(event: Message, scheduled: dict[int, str]) -> tuple[str, str, str]:
    """(type, name, details) of one history event."""
    kind = event.WhichOneof("eventType") or "unknown"
    body = getattr(event, kind)
    name = getattr(body, "name", "")
    if kind == "taskScheduled":
        scheduled[event.eventId] = name
    elif kind in ("taskCompleted", "taskFailed"):
        name = scheduled.get(body.taskScheduledId, "")
    details = ""
    if kind in ("executionStarted", "taskScheduled") and body.HasField("input"):
        details = "input: " + body.input.value
    elif kind == "taskCompleted" and body.HasField("result"):
        details = "result: " + body.result.value
    elif kind == "taskFailed":
        details = "error: " + body.failureDetails.errorMessage
    elif kind == "executionCompleted":
        status = orchestration.OrchestrationStatus.Name(body.workflowStatus).removeprefix("ORCHESTRATION_STATUS_")
        details = status + (f", output: {body.result.value}" if body.HasField("result") else "")
        if body.HasField("failureDetails"):
            details += f", error: {body.failureDetails.errorMessage}"
    return kind[0].upper() + kind[1:], name, clip(details)


def fetch_history(instance_id: str, app_id: str = "durable-agent-service") -> list[Message]:
    """The run's history events, oldest first, from the sidecar's workflow API."""
    token = os.environ.get("DAPR_API_TOKEN")
    with grpc.insecure_channel(f"127.0.0.1:{sidecar_grpc_port(app_id)}") as channel:
        return list(
            workflows_grpc.TaskHubSidecarServiceStub(channel)
            .GetInstanceHistory(
                workflows.GetInstanceHistoryRequest(instanceId=instance_id),
                metadata=[("dapr-api-token", token)] if token else None,
                timeout=10,
            )
            .events
        )


def main(instance_id: str, app_id: str = "durable-agent-service") -> None:
    try:
        events = fetch_history(instance_id, app_id)
    except grpc.RpcError as error:
        sys.exit(f"The sidecar of {app_id!r} answered {error.code().name}: {error.details()}")
    start = min(event.timestamp.ToMilliseconds() for event in events)
    scheduled: dict[int, str] = {}
    print(f"{'EVENT':>5}  {'TYPE':<18}  {'NAME':<44}  {'AT (ms)':>7}  DETAILS")
    for event in events:
        kind, name, details = describe(event, scheduled)
        number = str(event.eventId) if event.eventId >= 0 else ""
        at = event.timestamp.ToMilliseconds() - start
        print(f"{number:>5}  {kind:<18}  {name:<44}  {at:>7}  {details}".rstrip())


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__.strip().splitlines()[-1])
    main(*sys.argv[1:])
