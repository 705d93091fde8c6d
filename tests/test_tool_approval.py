"""A tool, and a human who approves it: durable_agent_tool.py, crash-tested.

Each story runs docs/tool-and-approval.md's command for the tool service and its curl commands. The tool appends a
line, keyed by `<instance id>:<tool call id>`, to outbox.txt, so a story counts the tool's runs by
the lines that carry its run's id. To hold the tool in the middle of its work, a story makes
outbox.txt a named pipe and keeps it full: the tool's write blocks until the story reads.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import shlex
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import (
    OUTBOX,
    SERVICE_URL,
    DaprRun,
    DaprRuns,
    answer_of,
    calls_for,
    page_command,
    wait_for,
    wait_for_outcome,
)
from tests.llm_server import HAIKU, LLMServer

TOOL_SERVICE = page_command("dapr run --app-id durable-agent-tool", containing="-p 8001")
POST_TASK = page_command("curl -X POST http://localhost:8001/run", containing="publish it")
LIST_APPROVALS = page_command("curl http://localhost:8001/hitl/approvals")
APPROVE = page_command("curl -X POST http://localhost:8001/hitl/approvals/", containing='"approved": true')
DENY = page_command("curl -X POST http://localhost:8001/hitl/approvals/", containing='"approved": false')
NOT_EXECUTED = "Tool 'publish_haiku' was not executed: approval was not granted or timed out."
# Long enough for every story that does not wait the timeout out, restarts included.
NO_TIMEOUT_S = 600


def curl(command: str, **replace: str) -> Any:
    for placeholder, value in replace.items():
        command = command.replace(f"<{placeholder}>", value)
    done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def start_task(task: str) -> str:
    """The page's curl that gives the tool service a task, with `task` in it; the run's id."""
    return curl(POST_TASK.replace("Write a haiku about programming and publish it.", task))["instance_id"]


def listed_for(instance_id: str) -> list[dict[str, Any]]:
    """The approvals the page's list shows for the run (other stories' runs may wait too)."""
    return [a for a in curl(LIST_APPROVALS) if a["instance_id"] == instance_id]


def waiting_approval(instance_id: str) -> dict[str, Any]:
    """The approval the run waits for, once the page's list shows it."""
    (approval,) = wait_for(lambda: listed_for(instance_id), 30, f"run {instance_id} to wait for an approval")
    return approval


def respond(approval_id: str, body: Any, content_type: str = "application/json") -> requests.Response:
    url = f"{SERVICE_URL}/hitl/approvals/{approval_id}/respond"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(url, data=data, headers={"Content-Type": content_type}, timeout=30)


def published(instance_id: str, outbox: bytes | None = None) -> int:
    """How many times the tool has published for the run: lines of the outbox with its id."""
    text = (outbox if outbox is not None else OUTBOX.read_bytes() if OUTBOX.exists() else b"").decode()
    return sum(1 for line in text.splitlines() if line.startswith(f"{instance_id}:"))


def conversation(service: DaprRun, instance_id: str) -> list[dict[str, Any]]:
    return service.get_state("agent-workflow", f"publisher:_workflow_{instance_id}")["messages"]


def assert_published_once_and_answered(service: DaprRun, instance_id: str, outcome: dict[str, Any]) -> None:
    """The run completed; its conversation holds the one tool call and its result, which the answer carries."""
    assert outcome["runtime_status"] == "COMPLETED"
    messages = conversation(service, instance_id)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    (call,) = messages[1]["tool_calls"]
    assert call["function"]["name"] == "publish_haiku"
    assert json.loads(call["function"]["arguments"]) == {"haiku": HAIKU}
    assert messages[2]["content"] == f"Published as {instance_id}:{call['id']}."
    assert answer_of(outcome) == f"The tool answered: {messages[2]['content']}"


@pytest.fixture
def start_tool_service(dapr_env: dict[str, str]) -> Iterator[Callable[..., DaprRun]]:
    """Starts the page's tool service command; every one started is stopped at the end."""
    services = DaprRuns(TOOL_SERVICE, "tool-service")
    yield lambda timeout_s=NO_TIMEOUT_S: services.start({**dapr_env, "APPROVAL_TIMEOUT_SECONDS": str(timeout_s)})
    services.stop_all()


class FullPipe:
    """outbox.txt as a named pipe kept full, so a tool's write blocks until `drain` reads."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        filler = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        for size in (4096, 1):  # whole pages, then what is left of the last one
            with contextlib.suppress(BlockingIOError):
                while True:
                    os.write(filler, b"#" * size)
        os.close(filler)
        self.read = b""

    def opened_by(self, pid: int) -> bool:
        """Whether process `pid` has the pipe open: the tool is in the middle of its write."""
        with contextlib.suppress(FileNotFoundError, PermissionError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if os.readlink(fd) == str(self.path):
                        return True
        return False

    def drain(self) -> bytes:
        """Read what the pipe holds now, and return all the lines read so far."""
        while True:
            try:
                chunk = os.read(self.reader, 65536)
            except OSError as error:
                if error.errno != errno.EAGAIN:
                    raise
                return self.read
            if not chunk:
                return self.read
            self.read += chunk.replace(b"#", b"")

    def close(self) -> None:
        os.close(self.reader)


def test_an_approved_tool_call_runs_the_tool_once_and_its_result_reaches_the_answer(
    llm: LLMServer, start_tool_service: Callable[..., DaprRun], outbox: Path
) -> None:
    service = start_tool_service()
    task = f"Write a haiku about tools and publish it ({uuid.uuid4().hex[:8]})."
    instance_id = start_task(task)
    approval = waiting_approval(instance_id)
    assert approval["step_name"] == "publish_haiku" and approval["tool_arguments"] == {"haiku": HAIKU}
    assert published(instance_id) == 0 and calls_for(llm, task) == 1

    answer = curl(APPROVE, **{"approval-id": approval["approval_request_id"]})

    assert answer == {"approval_request_id": approval["approval_request_id"], "approved": True, "status": "ok"}
    outcome = wait_for_outcome(f"/agent/instances/{instance_id}")
    assert_published_once_and_answered(service, instance_id, outcome)
    assert published(instance_id) == 1
    assert calls_for(llm, task) == 2  # one that asks for the tool, one that answers with its result
    assert listed_for(instance_id) == []


@pytest.mark.parametrize("victim", ["appPid", "daprdPid"], ids=["agent", "sidecar"])
def test_a_run_survives_kill_9_in_the_middle_of_the_tool_and_records_the_call_once(
    llm: LLMServer, start_tool_service: Callable[..., DaprRun], outbox: Path, victim: str
) -> None:
    pipe = FullPipe(outbox)
    try:
        service = start_tool_service()
        task = f"Write a haiku about crashes and publish it ({uuid.uuid4().hex[:8]})."
        instance_id = start_task(task)
        curl(APPROVE, **{"approval-id": waiting_approval(instance_id)["approval_request_id"]})
        wait_for(lambda: pipe.opened_by(service.sidecar["appPid"]), 30, "the tool to block in its write")

        os.kill(service.sidecar[victim], signal.SIGKILL)
        wait_for(lambda: service.process.poll() is not None, 30, "`dapr run` to end after the kill")
        service = start_tool_service()
        wait_for(lambda: pipe.opened_by(service.sidecar["appPid"]), 60, "the tool to run again")
        pipe.drain()  # room in the pipe: the tool's write goes through

        outcome = wait_for_outcome(f"/agent/instances/{instance_id}", timeout=120)
        lines = pipe.drain()
    finally:
        pipe.close()
    assert_published_once_and_answered(service, instance_id, outcome)
    assert 1 <= published(instance_id, lines) <= 2  # at least once: the interrupted try may have written too
    assert calls_for(llm, task) == 2  # the tool's repeat costs no LLM call


def test_a_tool_that_returned_before_the_agent_was_killed_is_not_run_again(
    llm: LLMServer, start_tool_service: Callable[..., DaprRun], outbox: Path
) -> None:
    service = start_tool_service()
    task = f"Write a haiku about finished work and publish it ({uuid.uuid4().hex[:8]})."
    instance_id = start_task(task)
    approval = waiting_approval(instance_id)
    release = llm.state.hold_next()  # the LLM call after the tool, which the kill interrupts
    curl(APPROVE, **{"approval-id": approval["approval_request_id"]})
    wait_for(lambda: calls_for(llm, task) == 2, 30, "the LLM call that follows the tool")
    assert published(instance_id) == 1

    os.kill(service.sidecar["appPid"], signal.SIGKILL)
    wait_for(lambda: service.process.poll() is not None, 30, "`dapr run` to end after the kill")
    release.set()
    service = start_tool_service()

    outcome = wait_for_outcome(f"/agent/instances/{instance_id}", timeout=120)
    assert_published_once_and_answered(service, instance_id, outcome)
    assert published(instance_id) == 1
    assert calls_for(llm, task) == 3  # the interrupted call, repeated once


def test_an_approval_pending_across_a_restart_of_the_agent_and_its_sidecar_is_still_pending(
    llm: LLMServer, start_tool_service: Callable[..., DaprRun], outbox: Path
) -> None:
    service = start_tool_service()
    task = f"Write a haiku about patience and publish it ({uuid.uuid4().hex[:8]})."
    instance_id = start_task(task)
    approval = waiting_approval(instance_id)

    for victim in ("appPid", "daprdPid"):
        os.kill(service.sidecar[victim], signal.SIGKILL)
    wait_for(lambda: service.process.poll() is not None, 30, "`dapr run` to end after the kill")
    service = start_tool_service()

    assert listed_for(instance_id) == [approval]
    curl(APPROVE, **{"approval-id": approval["approval_request_id"]})
    outcome = wait_for_outcome(f"/agent/instances/{instance_id}")
    assert_published_once_and_answered(service, instance_id, outcome)
    assert published(instance_id) == 1
    assert calls_for(llm, task) == 2


def assert_denied(service: DaprRun, llm: LLMServer, task: str, instance_id: str) -> None:
    """The run completed without the tool, and the model was told so in the tool's place."""
    outcome = wait_for_outcome(f"/agent/instances/{instance_id}", timeout=90)
    assert outcome["runtime_status"] == "COMPLETED"
    told = [r.body["messages"][-1] for r in llm.state.chat_requests() if task in r.user_text][-1]
    assert told["role"] == "tool" and told["content"] == NOT_EXECUTED
    assert [m["role"] for m in conversation(service, instance_id)] == ["user", "assistant", "tool", "assistant"]
    assert answer_of(outcome) == f"The tool answered: {NOT_EXECUTED}"
    assert published(instance_id) == 0
    assert calls_for(llm, task) == 2


def test_a_denied_tool_call_does_not_run_and_the_model_is_told(
    llm: LLMServer, start_tool_service: Callable[..., DaprRun], outbox: Path
) -> None:
    service = start_tool_service()
    task = f"Write a haiku about refusal and publish it ({uuid.uuid4().hex[:8]})."
    instance_id = start_task(task)
    approval = waiting_approval(instance_id)

    answer = curl(DENY, **{"approval-id": approval["approval_request_id"]})

    assert answer == {"approval_request_id": approval["approval_request_id"], "approved": False, "status": "ok"}
    assert_denied(service, llm, task, instance_id)


def test_no_decision_within_the_timeout_denies_the_tool_call(
    llm: LLMServer, start_tool_service: Callable[..., DaprRun], outbox: Path
) -> None:
    service = start_tool_service(timeout_s=5)
    task = f"Write a haiku about silence and publish it ({uuid.uuid4().hex[:8]})."
    instance_id = start_task(task)
    approval = waiting_approval(instance_id)

    assert_denied(service, llm, task, instance_id)
    assert listed_for(instance_id) == []
    late = respond(approval["approval_request_id"], {"approved": True})
    assert late.status_code == 409 and "timed out" in late.json()["detail"], late.text


def test_bad_decisions_get_a_clear_4xx_and_the_approval_still_waits(
    llm: LLMServer, start_tool_service: Callable[..., DaprRun], outbox: Path
) -> None:
    service = start_tool_service()
    task = f"Write a haiku about rules and publish it ({uuid.uuid4().hex[:8]})."
    instance_id = start_task(task)
    approval_id = waiting_approval(instance_id)["approval_request_id"]
    for approval, body, content_type, status, detail in [
        (approval_id, {"approved": True}, "text/plain", 415, "Content-Type: application/json"),
        (approval_id, b"{approved: true}", "application/json", 400, "not JSON"),
        (approval_id, {"approved": "yes"}, "application/json", 422, '"approved": true or false'),
        (approval_id, {"approved": 1}, "application/json", 422, '"approved": true or false'),
        (approval_id, [True], "application/json", 422, "a JSON object"),
        (approval_id, {}, "application/json", 422, "a JSON object"),
        (approval_id, {"approved": True, "by": "me"}, "application/json", 422, 'unknown field "by"'),
        (approval_id, {"approved": True, "reason": 7}, "application/json", 422, '"reason" must be a string'),
        (approval_id, {"approved": True, "reason": "x" * 1001}, "application/json", 422, "longer than 1000"),
        (approval_id, {"approved": True, "reason": "a\x00b"}, "application/json", 422, "control characters"),
        (approval_id, b"x" * 20000, "application/json", 413, "larger than"),
        ("not-an-id", {"approved": True}, "application/json", 404, "no approval has that id"),
        (str(uuid.uuid4()), {"approved": True}, "application/json", 404, "no approval is waiting with that id"),
    ]:
        answer = respond(approval, body, content_type)
        assert answer.status_code == status and detail in answer.json()["detail"], (body, answer.text)
    assert [a["approval_request_id"] for a in listed_for(instance_id)] == [approval_id]
    assert published(instance_id) == 0 and calls_for(llm, task) == 1

    with ThreadPoolExecutor(2) as pool:  # two approvers at once: one decides
        both = list(pool.map(lambda _: respond(approval_id, {"approved": True}), range(2)))
    assert sorted(r.status_code for r in both) == [200, 409], [r.text for r in both]
    twice = respond(approval_id, {"approved": False})
    assert twice.status_code == 409 and twice.json()["detail"] == "this approval was decided already: approved"
    outcome = wait_for_outcome(f"/agent/instances/{instance_id}")
    assert_published_once_and_answered(service, instance_id, outcome)
    assert published(instance_id) == 1 and calls_for(llm, task) == 2


def test_a_decision_for_a_run_that_was_terminated_while_it_waited_gets_409(
    llm: LLMServer, start_tool_service: Callable[..., DaprRun], outbox: Path
) -> None:
    start_tool_service()
    task = f"Write a haiku about endings and publish it ({uuid.uuid4().hex[:8]})."
    instance_id = start_task(task)
    approval_id = waiting_approval(instance_id)["approval_request_id"]
    terminated = requests.post(f"{SERVICE_URL}/agent/instances/{instance_id}/terminate", timeout=30)
    assert terminated.status_code == 200, terminated.text

    late = respond(approval_id, {"approved": True})

    assert late.status_code == 409 and late.json()["detail"] == "the run that asked for this approval has ended"
    assert listed_for(instance_id) == []
    assert published(instance_id) == 0 and calls_for(llm, task) == 1


decision_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)
decision_bodies = st.one_of(
    st.binary(max_size=100),
    decision_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"approved": decision_values}, optional={"reason": decision_values}).map(
        lambda v: json.dumps(v).encode()
    ),
    st.fixed_dictionaries({"approved": st.booleans()}, optional={"reason": st.text(max_size=50)}).map(
        lambda v: json.dumps(v).encode()
    ),
)


def test_a_fuzz_of_150_decisions_gets_no_5xx_and_the_run_ends_once(
    llm: LLMServer, start_tool_service: Callable[..., DaprRun], outbox: Path
) -> None:
    start_tool_service()
    task = f"Write a haiku about noise and publish it ({uuid.uuid4().hex[:8]})."
    instance_id = start_task(task)
    waiting = waiting_approval(instance_id)["approval_request_id"]
    statuses: collections.Counter[int] = collections.Counter()
    others = st.sampled_from([str(uuid.uuid4()), waiting.upper(), "", "..", "%2F"]) | st.text(max_size=40)
    ids = st.just(waiting) | others

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(approval=ids, body=decision_bodies, content_type=st.sampled_from(["application/json", "text/plain"]))
    def door_holds(approval: str, body: bytes, content_type: str) -> None:
        answer = respond(quote(approval, safe=""), body, content_type)
        assert answer.status_code < 500, (approval, body, answer.text)
        statuses[answer.status_code] += 1
        if answer.status_code == 200:
            decisions.append(answer.json()["approved"])

    decisions: list[bool] = []
    door_holds()
    last = respond(waiting, {"approved": False})  # a decision the fuzz did not make ends the run

    print(f"\nfuzz: 150 decisions, by status {dict(statuses)}")
    assert last.status_code == (409 if decisions else 200), last.text
    assert len(decisions) <= 1
    assert wait_for_outcome(f"/agent/instances/{instance_id}")["runtime_status"] == "COMPLETED"
    assert published(instance_id) == (1 if decisions == [True] else 0)
    assert calls_for(llm, task) == 2


def test_16_runs_wait_for_approval_at_once_and_each_approval_runs_its_tool_once(
    llm: LLMServer, start_tool_service: Callable[..., DaprRun], outbox: Path
) -> None:
    service = start_tool_service()
    batch = uuid.uuid4().hex[:8]
    tasks = [f"Write haiku {n} about patience and publish it ({batch})." for n in range(16)]
    llm.state.gather(16, within_s=50)  # the first LLM call of every run is answered only when all 16 wait

    with ThreadPoolExecutor(max_workers=16) as pool:
        instance_ids = list(pool.map(start_task, tasks))
        approvals = list(pool.map(waiting_approval, instance_ids))
        answers = list(pool.map(lambda a: curl(APPROVE, **{"approval-id": a["approval_request_id"]}), approvals))
        outcomes = list(pool.map(lambda i: wait_for_outcome(f"/agent/instances/{i}", timeout=120), instance_ids))

    assert llm.state.most_in_flight >= 16, f"the LLM saw at most {llm.state.most_in_flight} calls at once"
    assert [answer["status"] for answer in answers] == ["ok"] * 16
    for instance_id, outcome in zip(instance_ids, outcomes, strict=True):
        assert_published_once_and_answered(service, instance_id, outcome)
        assert published(instance_id) == 1
    assert [calls_for(llm, task) for task in tasks] == [2] * 16
