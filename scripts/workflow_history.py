"""List an app's workflow runs, or print one run's history, one event per line, by asking the
running sidecar.

The 1.16.5 CLI built here cannot do either against this project's store: `dapr workflow list` reads
the actor state store itself and sends PostgreSQL a query it refuses (a syntax error), and
`dapr workflow history` reads through the actor state API, which a 1.18 sidecar refuses for
workflow actors (ERR_ACTOR_TYPE_RESERVED). This asks the sidecar's workflow API instead, as the
CLI does from 1.17 on.

Usage: python scripts/workflow_history.py [<instance-id>] [--app-id APP_ID]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

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


def workflow_api(app_id: str) -> tuple[grpc.Channel, workflows_grpc.TaskHubSidecarServiceStub, list[tuple[str, str]]]:
    """A channel to the app's sidecar, the workflow API's stub on it, and the metadata each call carries."""
    token = os.environ.get("DAPR_API_TOKEN")
    channel = grpc.insecure_channel(f"127.0.0.1:{sidecar_grpc_port(app_id)}")
    return channel, workflows_grpc.TaskHubSidecarServiceStub(channel), [("dapr-api-token", token)] if token else []


def fetch_history(instance_id: str, app_id: str = "durable-agent-service") -> list[Message]:
    """The run's history events, oldest first, from the sidecar's workflow API."""
    channel, api, metadata = workflow_api(app_id)
    with channel:
        request = workflows.GetInstanceHistoryRequest(instanceId=instance_id)
        return list(api.GetInstanceHistory(request, metadata=metadata, timeout=10).events)


def fetch_runs(app_id: str) -> Iterator[orchestration.WorkflowState]:
    """Every run the app's workflows hold, page by page, each with its name, status and start."""
    channel, api, metadata = workflow_api(app_id)
    with channel:
        token = ""
        while True:
            page = api.ListInstanceIDs(
                workflows.ListInstanceIDsRequest(pageSize=100, continuationToken=token), metadata=metadata, timeout=10
            )
            for instance_id in page.instanceIds:
                found = api.GetInstance(workflows.GetInstanceRequest(instanceId=instance_id), metadata=metadata)
                if found.exists:  # purged between the two calls
                    yield found.workflowState
            token = page.continuationToken
            if not token:
                return


def age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def print_runs(app_id: str) -> None:
    runs = sorted(fetch_runs(app_id), key=lambda run: run.createdTimestamp.ToMilliseconds(), reverse=True)
    print(f"{'NAME':<32}  {'ID':<32}  {'STATUS':<10}  AGE")
    for run in runs:
        status = orchestration.OrchestrationStatus.Name(run.workflowStatus).removeprefix("ORCHESTRATION_STATUS_")
        started = time.time() - run.createdTimestamp.ToMilliseconds() / 1000
        print(f"{run.name:<32}  {run.instanceId:<32}  {status:<10}  {age(started)}")


def print_history(instance_id: str, app_id: str) -> None:
    events = fetch_history(instance_id, app_id)
    start = min(event.timestamp.ToMilliseconds() for event in events)
    scheduled: dict[int, str] = {}
    print(f"{'EVENT':>5}  {'TYPE':<18}  {'NAME':<44}  {'AT (ms)':>7}  DETAILS")
    for event in events:
        kind, name, details = describe(event, scheduled)
        number = str(event.eventId) if event.eventId >= 0 else ""
        at = event.timestamp.ToMilliseconds() - start
        print(f"{number:>5}  {kind:<18}  {name:<44}  {at:>7}  {details}".rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("instance_id", nargs="?", help="the run whose events to print; without it, list the runs")
    parser.add_argument("--app-id", default="durable-agent-service", help="whose runs (default: %(default)s)")
    args = parser.parse_args()
    try:
        if args.instance_id:
            print_history(args.instance_id, args.app_id)
        else:
            print_runs(args.app_id)
    except grpc.RpcError as error:
        sys.exit(f"The sidecar of {args.app_id!r} answered {error.code().name}: {error.details()}")


if __name__ == "__main__":
    main()
