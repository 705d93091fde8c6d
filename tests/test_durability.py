"""Durability: a run survives the agent or its sidecar being killed mid-run, and completes once."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import SERVICE, SERVICE_URL, DaprRun, answer_of, calls_for, post_run, wait_for, wait_for_outcome
from tests.llm_server import HAIKU, LLMServer


@pytest.fixture
def start_service(dapr_env: dict[str, str]) -> Iterator[Callable[[], DaprRun]]:
    """Starts the README's service command; every one started is stopped at the end."""
    runs: list[DaprRun] = []

    def start() -> DaprRun:
        run = DaprRun(SERVICE, dapr_env, "service")
        runs.append(run)
        run.wait_until_ready(SERVICE_URL)
        return run

    yield start
    for run in runs:
        run.stop()


@pytest.mark.parametrize("victim", ["appPid", "daprdPid"], ids=["agent", "sidecar"])
def test_a_run_survives_kill_9_mid_llm_call_and_completes_exactly_once(
    llm: LLMServer, start_service: Callable[[], DaprRun], victim: str
) -> None:
    service = start_service()
    task = f"Write a haiku about crashes ({uuid.uuid4().hex[:8]})."
    release = llm.state.hold_next()
    instance_id = post_run(task)["instance_id"]
    wait_for(lambda: calls_for(llm, task) == 1, 30, "the run's LLM call")

    os.kill(service.sidecar[victim], signal.SIGKILL)
    wait_for(lambda: service.process.poll() is not None, 30, "`dapr run` to end after the kill")
    release.set()
    service = start_service()

    outcome = wait_for_outcome(f"/agent/instances/{instance_id}", timeout=120)
    assert outcome["runtime_status"] == "COMPLETED"
    assert answer_of(outcome) == HAIKU
    assert calls_for(llm, task) == 2  # the interrupted call, repeated once; nothing else re-ran
    summaries = [r for r in llm.state.chat_requests() if "response_format" in r.body and task in r.user_text]
    assert len(summaries) == 1
    entry = service.get_state("agent-workflow", f"assistant:_workflow_{instance_id}")
    assert [(m["role"], m["content"]) for m in entry["messages"]] == [("user", task), ("assistant", HAIKU)]
