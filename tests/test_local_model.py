"""With no key, a real model answers: the README's service on the local model `make up` serves
(llama.cpp's OpenAI-compatible server and SmolLM2-135M-Instruct), not on the stand-in.

The model's words are its own: the stories assert structure and counts, never what it wrote.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from scripts.workflow_history import fetch_history
from tests.conftest import (
    LOCAL_MODEL,
    ROOT,
    SERVICE,
    SERVICE_URL,
    TASK,
    DaprRun,
    DaprRuns,
    answer_of,
    instance_with_task,
    local_model_env,
    model_calls,
    model_generations,
    port_open,
    post_run,
    publish,
    strip_ansi,
    wait_for,
    wait_for_outcome,
)
from tests.pages import page_command
from tests.test_streaming import STREAM_CURL, chunks_of
from tests.test_tool_approval import APPROVE, TOOL_SERVICE, curl, listed_for, published, start_task

LIST_MODELS = page_command("curl http://127.0.0.1:58000/v1/models")


@pytest.fixture
def start_local_service() -> Iterator[Callable[[], DaprRun]]:
    """The README's service command in a shell with no OPENAI_ variables."""
    services = DaprRuns(SERVICE, "local-model-service")
    yield lambda: services.start(local_model_env())
    services.stop_all()


@pytest.fixture
def local_service(start_local_service: Callable[[], DaprRun]) -> DaprRun:
    return start_local_service()


def new_calls(before: int) -> list[int]:
    return model_calls()[before:]


def test_a_run_posted_with_no_key_completes_with_the_local_models_answer_in_one_call(local_service: DaprRun) -> None:
    before = len(model_calls())

    outcome = wait_for_outcome(post_run(TASK)["status_url"], timeout=120)

    assert outcome["runtime_status"] == "COMPLETED", outcome
    answer = answer_of(outcome).strip()
    assert answer and answer != TASK
    assert new_calls(before) == [200]


def test_a_streamed_run_on_the_local_model_carries_its_answer(local_service: DaprRun) -> None:
    before = len(model_calls())

    streamed = subprocess.run(shlex.split(STREAM_CURL), capture_output=True, text=True, timeout=120)

    assert streamed.returncode == 0, streamed.stderr
    chunks = chunks_of(streamed.stdout, sse=False)
    assert [chunk["type"] for chunk in chunks] == ["start", "turn_complete", "session_complete"], chunks
    assert chunks[1]["complete_message"]["content"].strip() not in ("", TASK)
    assert new_calls(before) == [200]


def test_a_task_published_with_no_key_runs_once_on_the_local_model(local_service: DaprRun) -> None:
    task = f"Write a haiku about queues ({uuid.uuid4().hex[:8]})."
    before = len(model_calls())

    published = publish(task, local_model_env())

    assert published.returncode == 0, published.stderr
    instance_id = wait_for(lambda: instance_with_task(task), 60, "the published task's run")
    outcome = wait_for_outcome(f"/agent/instances/{instance_id}", timeout=120)
    assert outcome["runtime_status"] == "COMPLETED", outcome
    assert answer_of(outcome).strip() not in ("", task)
    assert new_calls(before) == [200]


def llm_step_scheduled(instance_id: str) -> bool:
    try:
        events = fetch_history(instance_id)
    except grpc.RpcError:  # the run is not scheduled yet
        return False
    scheduled = (e.taskScheduled.name for e in events if e.WhichOneof("eventType") == "taskScheduled")
    return any(name.endswith("call_llm") for name in scheduled)


def test_the_agent_killed_during_the_local_models_answer_completes_the_run_once(
    start_local_service: Callable[[], DaprRun],
) -> None:
    service = start_local_service()
    # A longer answer than a haiku: the model writes for seconds (3 to 26 s measured), long enough to kill in.
    task = f"Write a 100-word story about a programmer who never sleeps ({uuid.uuid4().hex[:8]})."
    before, written_before = len(model_calls()), model_generations()
    instance_id = post_run(task)["instance_id"]
    wait_for(lambda: llm_step_scheduled(instance_id), 60, "the run's LLM step")
    time.sleep(1)  # the step has sent its request: the model is writing

    os.kill(service.sidecar["appPid"], signal.SIGKILL)
    wait_for(lambda: service.process.poll() is not None, 30, "`dapr run` to end after the kill")
    service = start_local_service()

    outcome = wait_for_outcome(f"/agent/instances/{instance_id}", timeout=240)
    assert outcome["runtime_status"] == "COMPLETED", outcome
    entry = service.get_state("agent-workflow", f"assistant:_workflow_{instance_id}")
    assert [m["role"] for m in entry["messages"]] == ["user", "assistant"]
    assert entry["messages"][1]["content"] == answer_of(outcome)
    # One answer delivered, the one the run completed with. The model wrote more: the interrupted answer,
    # to its end (llama.cpp does not stop for a caller that left), then the step's re-run, queued behind
    # it; a re-run queued past the LLM's 60 s timeout (resources/resiliency.yaml) is tried once more.
    assert new_calls(before) == [200]
    assert model_generations() - written_before >= 2


def test_a_task_longer_than_the_models_context_ends_failed_with_the_servers_reason_without_retrying_for_minutes(
    local_service: DaprRun,
) -> None:
    """llama.cpp's server refuses a prompt over its context window (2048 tokens, scripts/stack.sh) with
    a 400. Dapr's resiliency tries the call 9 times; the step is not retried (service_runner/llm_refusals.py)."""
    task = "Summarize this text: " + " ".join(f"word{n}" for n in range(3000))  # about 14,000 tokens
    before = len(model_calls())

    outcome = wait_for_outcome(post_run(task)["status_url"], timeout=120)

    assert outcome["runtime_status"] == "FAILED", outcome
    message = outcome["failure_details"]["message"]
    assert "The LLM refused the request" in message and "maximum context length is 2048 tokens" in message, message
    assert new_calls(before) == [400] * 9, new_calls(before)
    time.sleep(5)
    assert len(new_calls(before)) == 9, "the model was still being called after the run failed"


def approval_or_end(instance_id: str) -> tuple[str, dict[str, Any]] | None:
    """What the run waits for: ("approval", the approval it waits for), ("ended", its status), or None yet."""
    if listed := listed_for(instance_id):
        return "approval", listed[0]
    response = requests.get(f"{SERVICE_URL}/agent/instances/{instance_id}", timeout=30)
    if response.status_code == 200 and response.json()["runtime_status"] in ("COMPLETED", "FAILED", "TERMINATED"):
        return "ended", response.json()
    return None


def test_the_tool_agent_on_the_local_model_asks_for_its_tool_and_one_approval_runs_it_once(outbox: Path) -> None:
    """The server's chatml-function-calling format (scripts/stack.sh) lets the 135M model call a tool,
    not always: some runs it answers in words, or writes arguments that are not JSON, which dapr-agents
    drops. The story gives it up to 5 tasks, approves the first call it asks for, and ends that run."""
    services = DaprRuns(TOOL_SERVICE, "local-model-tool-service")
    tries: list[str] = []
    try:
        services.start({**local_model_env(), "APPROVAL_TIMEOUT_SECONDS": "600"})
        while len(tries) < 5:
            instance_id = start_task(f"Write a haiku about programming and publish it ({uuid.uuid4().hex[:8]}).")
            kind, found = wait_for(partial(approval_or_end, instance_id), 120, f"run {instance_id} to ask or end")
            tries.append(kind)
            if kind == "approval":
                break
        print(f"\nthe model asked for the tool on try {len(tries)} of up to 5: {tries}")
        assert tries[-1] == "approval", tries
        assert found["step_name"] == "publish_haiku" and isinstance(found["tool_arguments"]["haiku"], str)
        assert published(instance_id) == 0

        curl(APPROVE, **{"approval-id": found["approval_request_id"]})

        wait_for(lambda: published(instance_id) == 1, 60, "the approved tool call to run")
        ended = requests.post(f"{SERVICE_URL}/agent/instances/{instance_id}/terminate", timeout=30)
        assert ended.status_code in (200, 409), ended.text  # 409: the model answered, and the run had ended
        assert wait_for_outcome(f"/agent/instances/{instance_id}", 60)["runtime_status"] in ("COMPLETED", "TERMINATED")
        assert published(instance_id) == 1
    finally:
        services.stop_all()


def test_the_pages_curl_lists_the_model_the_launcher_names() -> None:
    """.venv/bin/dapr hands the sidecar LOCAL_MODEL_NAME as OPENAI_MODEL; the server answers to it.
    The server answers this behind any generation still running (a run the story before terminated
    goes on generating, up to the 2048-token context), hence a timeout past one full context."""
    listed = subprocess.run(shlex.split(LIST_MODELS), capture_output=True, text=True, timeout=180)
    assert listed.returncode == 0, listed.stderr
    assert [model["id"] for model in json.loads(listed.stdout)["data"]] == [LOCAL_MODEL["LOCAL_MODEL_NAME"]]
    assert f":{LOCAL_MODEL['LOCAL_MODEL_PORT']}/" in LIST_MODELS


def test_setup_with_a_key_set_builds_no_local_model(tmp_path: Path) -> None:
    """A user whose OPENAI_API_KEY is set does not wait for llama.cpp's compile, nor download the model."""
    checkout = tmp_path / "checkout"
    for part in ("scripts", "config"):
        shutil.copytree(ROOT / part, checkout / part)
    for file in ("versions.env", "requirements-model.txt"):
        shutil.copy(ROOT / file, checkout)

    setup = subprocess.run(
        [str(checkout / "scripts" / "setup.sh"), "model"],
        env={
            **{k: v for k, v in os.environ.items() if k != "SETUP_QUIET"},  # `make test` runs quiet: the user's is not
            **{"HOME": str(tmp_path / "home"), "OPENAI_API_KEY": "sk-unused"},
        },
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert "OPENAI_API_KEY is set: no local model" in setup.stdout, setup.stdout
    assert "compiling" not in setup.stdout and "downloading" not in setup.stdout, setup.stdout
    assert not (checkout / ".model").exists() and not (tmp_path / "home").exists()


def test_make_serve_with_no_key_says_the_local_model_answers_and_it_does(tmp_path: Path) -> None:
    log = tmp_path / "make-serve.log"
    before = len(model_calls())
    with log.open("w") as output:
        serving = subprocess.Popen(
            ["make", "serve"], cwd=ROOT, env=local_model_env(), stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: port_open(8001) or serving.poll() is not None, 120, "`make serve` to listen on 8001")
        outcome = wait_for_outcome(post_run(TASK)["status_url"], timeout=120)
    finally:
        os.killpg(serving.pid, signal.SIGTERM)  # make, the CLI, daprd and the app: the group make leads
        try:
            serving.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(serving.pid, signal.SIGKILL)
    printed = strip_ansi(log.read_text())

    said = f"Model: {LOCAL_MODEL['LOCAL_MODEL_NAME']}, on this machine (llama.cpp on 127.0.0.1:58000)"
    assert said in printed and printed.index(said) < printed.index("Starting Dapr with id"), printed
    assert outcome["runtime_status"] == "COMPLETED", printed[-3000:]
    assert new_calls(before) == [200]
