"""The LLM misbehaves; resources/resiliency.yaml and the workflow's retries absorb it, or fail clearly."""

from __future__ import annotations

import dataclasses
import time
import uuid

import pytest
from dapr_agents.agents.configs import WorkflowRetryPolicy

from tests.conftest import DaprRun, answer_of, calls_for, post_run, wait_for_outcome
from tests.llm_server import HAIKU, LLMServer


def unique_task() -> str:
    return f"Write a haiku about retries ({uuid.uuid4().hex[:8]})."


@pytest.mark.parametrize("status", [500, 429])
def test_llm_errors_that_clear_are_retried_and_the_run_completes_with_one_answer(
    service: DaprRun, llm: LLMServer, status: int
) -> None:
    llm.state.fail_next(2, status)
    task = unique_task()

    run = post_run(task)

    outcome = wait_for_outcome(run["status_url"])
    assert outcome["runtime_status"] == "COMPLETED"
    assert calls_for(llm, task) == 3  # two refused, one answered
    entry = service.get_state("agent-workflow", f"assistant:_workflow_{run['instance_id']}")
    assert [(m["role"], m["content"]) for m in entry["messages"]] == [("user", task), ("assistant", HAIKU)]


def test_a_hanging_llm_call_is_timed_out_after_60_seconds_and_retried(service: DaprRun, llm: LLMServer) -> None:
    never_answered = llm.state.hold_next()
    task = unique_task()
    try:
        started = time.monotonic()

        outcome = wait_for_outcome(post_run(task)["status_url"], timeout=150)

        assert outcome["runtime_status"] == "COMPLETED"
        assert answer_of(outcome) == HAIKU
        assert calls_for(llm, task) == 2  # the hung call, then its retry
        assert 60 <= time.monotonic() - started < 120  # resources/resiliency.yaml: llm timeout 60s
    finally:
        never_answered.set()


def test_the_run_completes_after_the_llm_was_down_for_30_seconds(service: DaprRun, llm: LLMServer) -> None:
    llm.state.go_down_for(30)
    task = unique_task()

    outcome = wait_for_outcome(post_run(task)["status_url"], timeout=120)

    assert outcome["runtime_status"] == "COMPLETED"
    assert time.monotonic() >= llm.state.down_until
    assert answer_of(outcome) == HAIKU


def test_a_permanently_failing_llm_ends_the_run_as_failed_with_the_reason(service: DaprRun, llm: LLMServer) -> None:
    llm.state.fail_next(1000, 500)
    task = unique_task()
    started = time.monotonic()

    outcome = wait_for_outcome(post_run(task)["status_url"], timeout=180)

    assert outcome["runtime_status"] == "FAILED"
    assert "API returned unexpected status code: 500" in outcome["failure_details"]["message"]
    assert time.monotonic() - started < 150
    calls = calls_for(llm, task)
    time.sleep(10)
    assert calls_for(llm, task) == calls, "the LLM was still being called after the run failed"


def test_a_request_the_llm_refuses_ends_the_run_at_once_with_its_reason(service: DaprRun, llm: LLMServer) -> None:
    """A 400 (a prompt over the context, say) is the same on every try: the sidecar's resiliency tries
    the call 9 times, and the step is not retried (service_runner/llm_refusals.py); before, 27 calls."""
    llm.state.fail_next(1000, 400)
    task = unique_task()

    outcome = wait_for_outcome(post_run(task)["status_url"], timeout=120)

    assert outcome["runtime_status"] == "FAILED"
    message = outcome["failure_details"]["message"]
    assert "The LLM refused the request" in message and "status code: 400" in message, message
    assert calls_for(llm, task) == 9
    time.sleep(5)
    assert calls_for(llm, task) == 9, "the LLM was still being called after the run failed"


def test_dapr_agents_still_retries_every_failed_llm_step_so_llm_refusals_is_still_needed() -> None:
    """dapr-agents 1.0.9 retries a failed step 3 times, whatever failed, and has no way to name errors
    it should not retry. If either changes, service_runner/llm_refusals.py may be replaced by its setting."""
    assert WorkflowRetryPolicy().max_attempts == 3
    names = [field.name for field in dataclasses.fields(WorkflowRetryPolicy)]
    assert names == [
        "max_attempts",
        "initial_backoff_seconds",
        "max_backoff_seconds",
        "backoff_multiplier",
        "retry_timeout",
    ]
