"""Streaming a run: docs/http-api.md's `curl -N .../run/stream`, as NDJSON and as Server-Sent Events."""

from __future__ import annotations

import json
import shlex
import subprocess
from typing import Any

import pytest

from tests.conftest import TASK, DaprRun, calls_for, page_command, wait_for_outcome
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
