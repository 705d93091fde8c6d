"""Approvals on any replica: docs/tool-and-approval.md's two tool services, side by side.

Each story starts the page's tool service and its second replica (ports 8001 and 8002). Both share
Redis, placement and the scheduler, so Dapr spreads the runs over them whichever one a task was
posted to, and a story does not know which replica hosts a run: it only asks the replicas.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import DaprRun, calls_for, page_command, post_run, redis_cli, wait_for, wait_for_outcome
from tests.llm_server import LLMServer
from tests.test_tool_approval import NO_TIMEOUT_S, TOOL_SERVICE, assert_published_once_and_answered, published

SECOND_REPLICA = page_command("dapr run --app-id durable-agent-tool", containing="-p 8002")
FIRST, SECOND = "http://localhost:8001", "http://localhost:8002"


@pytest.fixture
def two_replicas(dapr_env: dict[str, str]) -> Iterator[Callable[[], tuple[DaprRun, DaprRun]]]:
    """Starts the page's two tool services; both are stopped at the end."""
    started: list[DaprRun] = []
    env = {**dapr_env, "APPROVAL_TIMEOUT_SECONDS": str(NO_TIMEOUT_S)}

    def start() -> tuple[DaprRun, DaprRun]:
        for command, name, url in ((TOOL_SERVICE, "tool-replica-1", FIRST), (SECOND_REPLICA, "tool-replica-2", SECOND)):
            started.append(DaprRun(command, env, name))
            started[-1].wait_until_ready(url)
        return started[0], started[1]

    yield start
    for run in started:
        run.stop()


def tasks(about: str, count: int) -> list[str]:
    batch = uuid.uuid4().hex[:8]
    return [f"Write haiku {n} about {about} and publish it ({batch})." for n in range(count)]


def waiting_on(replica: str, instance_ids: list[str]) -> list[dict[str, Any]]:
    """The approvals `replica` lists for these runs, once it lists one for each; in their order."""

    def listed() -> list[dict[str, Any]] | None:
        answer = requests.get(f"{replica}/hitl/approvals", timeout=30)
        assert answer.status_code == 200, answer.text
        by_run = {approval["instance_id"]: approval for approval in answer.json()}
        return [by_run[i] for i in instance_ids] if set(instance_ids) <= set(by_run) else None

    return wait_for(listed, 60, f"{replica} to list an approval for each of {len(instance_ids)} runs", 0.5)


def listed_runs(replica: str) -> set[str]:
    """The runs whose approvals `replica` lists now."""
    answer = requests.get(f"{replica}/hitl/approvals", timeout=30)
    assert answer.status_code == 200, answer.text
    return {approval["instance_id"] for approval in answer.json()}


def decide(replica: str, approval: dict[str, Any], approved: bool = True) -> requests.Response:
    url = f"{replica}/hitl/approvals/{approval['approval_request_id']}/respond"
    return requests.post(url, json={"approved": approved}, timeout=60)


def outcomes(replica: str, instance_ids: list[str]) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=16) as pool:
        ended = pool.map(lambda i: wait_for_outcome(f"/agent/instances/{i}", 120, service_url=replica), instance_ids)
        return list(ended)


def assert_approved_runs_completed(
    llm: LLMServer, service: DaprRun, replica: str, asked: list[str], instance_ids: list[str], answers: list[Any]
) -> None:
    """Every approval taken (200), and each run completed, its tool run once, in two LLM calls."""
    assert [answer.status_code for answer in answers] == [200] * len(answers), [answer.text for answer in answers]
    for instance_id, outcome in zip(instance_ids, outcomes(replica, instance_ids), strict=True):
        assert_published_once_and_answered(service, instance_id, outcome)
        assert published(instance_id) == 1
    assert [calls_for(llm, task) for task in asked] == [2] * len(asked)


def test_approvals_asked_for_through_one_replica_are_listed_and_approved_through_the_other(
    llm: LLMServer, two_replicas: Callable[[], tuple[DaprRun, DaprRun]], outbox: Path
) -> None:
    first, _ = two_replicas()
    asked = tasks("neighbours", 4)
    instance_ids = [post_run(task, FIRST)["instance_id"] for task in asked]

    approvals = waiting_on(SECOND, instance_ids)
    assert approvals == waiting_on(FIRST, instance_ids)  # the same list on both
    answers = [decide(SECOND, approval) for approval in approvals]

    assert_approved_runs_completed(llm, first, FIRST, asked, instance_ids, answers)
    assert not (listed_runs(FIRST) | listed_runs(SECOND)) & set(instance_ids)


def test_16_runs_wait_at_once_on_two_replicas_and_are_decided_half_on_each(
    llm: LLMServer, two_replicas: Callable[[], tuple[DaprRun, DaprRun]], outbox: Path
) -> None:
    first, _ = two_replicas()
    redis_cli("del", "durable-agent-tool||publisher:approvals_waiting")  # so that both replicas write the first index
    asked = tasks("halves", 16)
    llm.state.gather(16, within_s=50)  # the first LLM call of every run is answered only when all 16 wait
    replicas = [FIRST, SECOND] * 8
    with ThreadPoolExecutor(max_workers=16) as pool:
        instance_ids = [run["instance_id"] for run in pool.map(post_run, asked, replicas)]
    approvals = waiting_on(FIRST, instance_ids)
    assert approvals == waiting_on(SECOND, instance_ids)

    # Each replica decides the runs the other one was given.
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(decide, [SECOND, FIRST] * 8, approvals))

    assert llm.state.most_in_flight >= 16, f"the LLM saw at most {llm.state.most_in_flight} calls at once"
    assert_approved_runs_completed(llm, first, SECOND, asked, instance_ids, answers)


def test_a_replica_killed_while_approvals_wait_leaves_them_all_to_the_other(
    llm: LLMServer, two_replicas: Callable[[], tuple[DaprRun, DaprRun]], outbox: Path
) -> None:
    first, second = two_replicas()
    asked = tasks("survivors", 8)
    posted = [post_run(task, replica) for task, replica in zip(asked, [FIRST, SECOND] * 4, strict=True)]
    instance_ids = [run["instance_id"] for run in posted]
    approvals = waiting_on(SECOND, instance_ids)

    for victim in ("appPid", "daprdPid"):
        os.kill(first.sidecar[victim], signal.SIGKILL)
    wait_for(lambda: first.process.poll() is not None, 30, "`dapr run` of replica 1 to end after the kill")

    assert waiting_on(SECOND, instance_ids) == approvals
    answers = [decide(SECOND, approval) for approval in approvals]
    assert_approved_runs_completed(llm, second, SECOND, asked, instance_ids, answers)


def test_two_decisions_at_once_on_two_replicas_one_is_taken_the_other_gets_409(
    llm: LLMServer, two_replicas: Callable[[], tuple[DaprRun, DaprRun]], outbox: Path
) -> None:
    two_replicas()
    asked = tasks("rivals", 4)
    instance_ids = [post_run(task, FIRST)["instance_id"] for task in asked]
    approvals = waiting_on(FIRST, instance_ids)

    with ThreadPoolExecutor(max_workers=8) as pool:
        pairs = [
            (pool.submit(decide, FIRST, approval, True), pool.submit(decide, SECOND, approval, False))
            for approval in approvals
        ]
        answers = [(approve.result(), deny.result()) for approve, deny in pairs]

    for instance_id, (approve, deny) in zip(instance_ids, answers, strict=True):
        assert sorted([approve.status_code, deny.status_code]) == [200, 409], (approve.text, deny.text)
        assert "decided already" in (deny if deny.status_code == 409 else approve).json()["detail"]
        assert wait_for_outcome(f"/agent/instances/{instance_id}", 120)["runtime_status"] == "COMPLETED"
        assert published(instance_id) == (1 if approve.status_code == 200 else 0)
    assert [calls_for(llm, task) for task in asked] == [2] * 4
    # A third decision, on either replica, finds the first one.
    again = [decide(replica, approval) for approval in approvals for replica in (FIRST, SECOND)]
    assert {answer.status_code for answer in again} == {409}


def test_a_decision_for_an_ended_run_gets_409_on_either_replica(
    llm: LLMServer, two_replicas: Callable[[], tuple[DaprRun, DaprRun]], outbox: Path
) -> None:
    two_replicas()
    (task,) = tasks("endings", 1)
    instance_id = post_run(task, SECOND)["instance_id"]
    (approval,) = waiting_on(FIRST, [instance_id])
    terminated = requests.post(f"{FIRST}/agent/instances/{instance_id}/terminate", timeout=30)
    assert terminated.status_code == 200, terminated.text

    for replica in (FIRST, SECOND):
        late = decide(replica, approval)
        assert late.status_code == 409 and late.json()["detail"] == "the run that asked for this approval has ended"
        assert instance_id not in listed_runs(replica)
    assert published(instance_id) == 0 and calls_for(llm, task) == 1
