"""A task sent twice runs once: an Idempotency-Key on POST /run, and a published message's CloudEvent id."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import (
    DaprRun,
    all_delivered,
    calls_for,
    instance_with_task,
    page_command,
    post_run,
    post_with_key,
    publish_cloudevent,
    wait_for,
    wait_for_outcome,
)
from tests.llm_server import LLMServer

IDEMPOTENT_CURL = page_command('curl -i -X POST http://localhost:8001/run -H "Idempotency-Key')


def test_the_readmes_retried_curl_starts_one_run_while_it_runs_and_after_it_has_finished(
    service: DaprRun, llm: LLMServer
) -> None:
    key = f"haiku-{uuid.uuid4().hex[:8]}"
    command = shlex.split(IDEMPOTENT_CURL.replace("haiku-2026-11-25-0001", key))
    task = json.loads(command[command.index("-d") + 1])["task"]
    release = llm.state.hold_next()

    def curl() -> tuple[str, dict[str, str]]:
        answer = subprocess.run(command, capture_output=True, text=True).stdout
        head, body = answer.split("\n\n", 1)
        assert head.startswith("HTTP/1.1 200 OK"), answer
        return head, json.loads(body)

    first_head, first = curl()
    wait_for(lambda: calls_for(llm, task) == 1, 30, "the run's LLM call")
    in_flight_head, in_flight = curl()
    release.set()
    assert wait_for_outcome(first["status_url"])["runtime_status"] == "COMPLETED"
    after_head, after = curl()

    assert first == in_flight == after
    assert "idempotent-replayed" not in first_head.lower()
    assert "idempotent-replayed: true" in in_flight_head.lower() and "idempotent-replayed: true" in after_head.lower()
    assert calls_for(llm, task) == 1


def test_ten_requests_at_once_with_one_key_start_one_run(service: DaprRun, llm: LLMServer) -> None:
    task, key = f"Write a haiku about crowds ({uuid.uuid4().hex[:8]}).", uuid.uuid4().hex

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: post_with_key(task, key), range(10)))

    assert [a.status_code for a in answers] == [200] * 10
    assert len({a.json()["instance_id"] for a in answers}) == 1
    assert wait_for_outcome(answers[0].json()["status_url"])["runtime_status"] == "COMPLETED"
    assert calls_for(llm, task) == 1


def test_a_key_used_again_for_another_task_is_refused(service: DaprRun, llm: LLMServer) -> None:
    key = uuid.uuid4().hex
    first = post_with_key(f"Write a haiku about keys ({key[:8]}).", key)

    other = post_with_key(f"Write a haiku about locks ({key[:8]}).", key)

    assert first.status_code == 200
    assert other.status_code == 422 and "used for another task" in other.json()["detail"]


def test_without_a_key_each_request_is_a_run_of_its_own(service: DaprRun, llm: LLMServer) -> None:
    task = f"Write a haiku about twins ({uuid.uuid4().hex[:8]})."

    runs = [post_run(task), post_run(task)]

    assert runs[0]["instance_id"] != runs[1]["instance_id"]
    assert [wait_for_outcome(r["status_url"])["runtime_status"] for r in runs] == ["COMPLETED", "COMPLETED"]
    assert calls_for(llm, task) == 2


def test_a_message_published_again_with_the_same_cloudevent_id_runs_once(service: DaprRun, llm: LLMServer) -> None:
    task, event_id = f"Write a haiku about echoes ({uuid.uuid4().hex[:8]}).", uuid.uuid4().hex
    publish_cloudevent(service, event_id, task)
    instance_id = wait_for(lambda: instance_with_task(task), 30, "the published task to run")
    assert wait_for_outcome(f"/agent/instances/{instance_id}")["runtime_status"] == "COMPLETED"

    publish_cloudevent(service, event_id, task)

    wait_for(all_delivered, 30, "the agent to take the repeated message")
    time.sleep(1)  # room for a run it might have started to reach Redis and the LLM
    assert instance_with_task(task) == instance_id
    assert calls_for(llm, task) == 1
