"""The service: POST /run and `dapr publish` start durable runs; their workflows' state lands in
PostgreSQL, the rest in Redis."""

from __future__ import annotations

import collections
import json
import re
import shlex
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.conftest import (
    SERVICE_URL,
    TASK,
    DaprRun,
    answer_of,
    instance_with_task,
    page_command,
    post_run,
    publish,
    publish_data,
    redis_cli,
    wait_for,
    wait_for_outcome,
    workflow_rows,
)
from tests.llm_server import HAIKU, LLMServer

POST_RUN = page_command('curl -i -X POST http://localhost:8001/run -H "Content-Type')
STATUS_CURL = page_command("curl http://localhost:8001/agent")


def test_the_readmes_curl_starts_a_run_whose_status_url_reaches_completed_with_the_answer(
    service: DaprRun, llm: LLMServer
) -> None:
    started = subprocess.run(
        shlex.split(POST_RUN),
        capture_output=True,
        text=True,
    )

    head, body = started.stdout.split("\n\n", 1)
    assert head.startswith("HTTP/1.1 200 OK"), started.stdout
    run = json.loads(body)
    assert run["status_url"] == f"/agent/instances/{run['instance_id']}"
    status_curl = re.sub(r"/agent/instances/\w+", run["status_url"], STATUS_CURL)

    def completed() -> dict[str, str] | None:
        status = json.loads(subprocess.run(shlex.split(status_curl), capture_output=True, text=True).stdout)
        return status if status["runtime_status"] == "COMPLETED" else None

    status = wait_for(completed, 60, "the README's status curl to show COMPLETED")
    assert json.loads(status["serialized_input"]) == {"task": TASK}
    assert answer_of(status) == HAIKU
    assert [r.user_text for r in llm.state.chat_requests()] == [TASK]  # one task, one LLM call


def test_dapr_publish_to_assistant_topic_starts_a_run_that_completes(
    service: DaprRun, llm: LLMServer, dapr_env: dict[str, str]
) -> None:
    task = f"Write a haiku about message queues ({uuid.uuid4().hex[:8]})."
    published = publish(task, dapr_env)

    assert published.returncode == 0, published.stdout + published.stderr
    assert "Event published successfully" in published.stdout
    instance_id = wait_for(lambda: instance_with_task(task), 30, "a workflow run for the published task")
    status = wait_for_outcome(f"/agent/instances/{instance_id}")
    assert status["runtime_status"] == "COMPLETED"
    assert [r.user_text for r in llm.state.chat_requests()] == [task]  # one task, one LLM call


def test_a_run_leaves_its_conversation_and_registry_entry_in_redis_and_its_workflow_state_in_postgresql(
    service: DaprRun, llm: LLMServer
) -> None:
    instance_id = post_run(TASK)["instance_id"]
    assert wait_for_outcome(f"/agent/instances/{instance_id}")["runtime_status"] == "COMPLETED"

    entry = service.get_state("agent-workflow", f"assistant:_workflow_{instance_id}")
    conversation = [(m["role"], m["content"]) for m in entry["messages"]]
    assert conversation == [("user", TASK), ("assistant", HAIKU)]
    assert redis_cli("--scan", "--pattern", f"*_memory_{instance_id}").split() == []  # no summary for memory
    assert [r.user_text for r in llm.state.chat_requests()] == [TASK]  # one task, one LLM call
    actor = "dapr.internal.default.durable-agent-service.workflow"
    assert workflow_rows(f"durable-agent-service||{actor}||{instance_id}||metadata") == [
        f"durable-agent-service||{actor}||{instance_id}||metadata"
    ]
    assert redis_cli("--scan", "--pattern", f"*{actor}||{instance_id}*").split() == []  # none of it in Redis

    assert "Assistant" in service.get_state("agent-registry", "agents:default:_index")["agents"]
    assert service.get_state("agent-registry", "agents:default:Assistant")["agent"]["appid"] == "durable-agent-service"

    # The same, read the way the README shows it.
    messages = json.loads(redis_cli("hget", f"durable-agent-service||assistant:_workflow_{instance_id}", "data"))
    assert messages["messages"][-1]["content"] == HAIKU
    registered = json.loads(redis_cli("hget", "durable-agent-service||agents:default:Assistant", "data"))
    assert registered["agent"]["role"] == "Assistant"


def test_a_task_published_as_a_raw_payload_runs_like_a_cloudevent_one(
    service: DaprRun, llm: LLMServer, dapr_env: dict[str, str]
) -> None:
    task = f"Write a haiku about plain JSON ({uuid.uuid4().hex[:8]})."
    published = publish_data(json.dumps({"task": task}), dapr_env, raw=True)

    assert "Event published successfully" in published.stdout, published.stdout + published.stderr
    instance_id = wait_for(lambda: instance_with_task(task), 30, "a workflow run for the raw message")
    assert wait_for_outcome(f"/agent/instances/{instance_id}")["runtime_status"] == "COMPLETED"
    assert [r.user_text for r in llm.state.chat_requests()] == [task]


def test_healthz_answers_while_the_service_serves_and_takes_nothing_but_get(service: DaprRun) -> None:
    """What Kubernetes' probes and Dapr's app health check ask (deploy/agent.yaml)."""
    healthy = requests.get(f"{SERVICE_URL}/healthz", timeout=5)
    posted = requests.post(f"{SERVICE_URL}/healthz", json={"task": TASK}, timeout=5)

    assert (healthy.status_code, healthy.json()) == (200, {"status": "serving"})
    assert posted.status_code == 405


def test_status_urls_polled_from_the_moment_their_runs_start_answer_200_or_404(
    service: DaprRun, llm: LLMServer
) -> None:
    """Read in the instant a run's next step is written, the sidecar can fail (dapr/dapr #10242);
    the service reads again, and the client sees none of it."""
    batch = uuid.uuid4().hex[:8]

    def poll_from_start(n: int) -> list[requests.Response]:
        status_url = post_run(f"Write haiku number {n} about polling ({batch}).")["status_url"]
        return [requests.get(f"{SERVICE_URL}{status_url}", timeout=30) for _ in range(25)]

    with ThreadPoolExecutor(max_workers=40) as pool:
        answers = [answer for polls in pool.map(poll_from_start, range(40)) for answer in polls]

    by_status = collections.Counter(answer.status_code for answer in answers)
    print(f"\n1,000 polls from the start of 40 runs, by status: {dict(by_status)}")
    assert len(answers) == 1000 and set(by_status) <= {200, 404}, by_status
