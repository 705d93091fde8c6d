"""Streaming a run: docs/http-api.md's `curl -N .../run/stream`, as NDJSON and as Server-Sent Events;
and what a streamed run leaves in Redis once it has ended: nothing."""

from __future__ import annotations

import json
import shlex
import subprocess
import uuid
from typing import Any

import pytest
import requests

from tests.conftest import TASK, DaprRun, calls_for, page_command, redis_cli, wait_for, wait_for_outcome
from tests.llm_server import HAIKU, LLMServer

STREAM_CURL = page_command("curl -N -X POST http://localhost:8001/run/stream")


def chunks_of(output: str, sse: bool) -> list[dict[str, Any]]:
    if not sse:
        return [json.loads(line) for line in output.splitlines() if line]
    events = [block.splitlines() for block in output.split("\n\n") if block.strip()]
    chunks = [json.loads(lines[1].removeprefix("data: ")) for lines in events]
    assert [lines[0].removeprefix("event: ") for lines in events] == [chunk["type"] for chunk in chunks]
    return chunks


@pytest.mark.parametrize("sse", [False, True], ids=["ndjson", "sse"])
def test_the_readmes_stream_command_streams_a_run_from_start_to_its_answer(
    service: DaprRun, llm: LLMServer, sse: bool
) -> None:
    command = shlex.split(STREAM_CURL) + (["-H", "Accept: text/event-stream"] if sse else [])

    streamed = subprocess.run(command, capture_output=True, text=True, timeout=120)

    assert streamed.returncode == 0, streamed.stderr
    chunks = chunks_of(streamed.stdout, sse)
    assert [chunk["type"] for chunk in chunks] == ["start", "turn_complete", "session_complete"], chunks
    instance_id = chunks[0]["workflow_instance_id"]
    assert {chunk["workflow_instance_id"] for chunk in chunks} == {instance_id}
    assert chunks[1]["complete_message"]["content"] == HAIKU
    assert chunks[2]["event_data"] == {"status": "completed"}
    assert wait_for_outcome(f"/agent/instances/{instance_id}")["runtime_status"] == "COMPLETED"
    assert calls_for(llm, TASK) == 1
    wait_for(lambda: not stream_left(instance_id), 15, f"the run's stream agents.stream.{instance_id} to be deleted")


def stream_left(instance_id: str) -> bool:
    return redis_cli("exists", f"agents.stream.{instance_id}").strip() == "1"


def test_a_stream_whose_caller_left_early_is_deleted_once_its_run_has_ended(service: DaprRun, llm: LLMServer) -> None:
    task = f"Write a haiku about leaving early ({uuid.uuid4().hex[:8]})."
    llm.state.latency_s = 3.0  # the run is still in its LLM call when its caller leaves
    url, body = "http://localhost:8001/run/stream", {"task": task}
    with requests.post(url, json=body, stream=True, timeout=30) as streamed:
        first = json.loads(next(streamed.iter_lines()))
    instance_id = first["workflow_instance_id"]
    assert first["type"] == "start" and stream_left(instance_id)

    assert wait_for_outcome(f"/agent/instances/{instance_id}", 60)["runtime_status"] == "COMPLETED"
    wait_for(lambda: not stream_left(instance_id), 15, f"the run's stream agents.stream.{instance_id} to be deleted")
    assert calls_for(llm, task) == 1
