"""Tools from real MCP servers: durable_agent_mcp.py with the time and memory reference servers (docs/mcp.md).

The stand-in LLM asks for the calls; the servers are the ones `make setup` installs, started by the
sidecar from mcp/servers.yaml. A story counts a write by the entities in the memory server's file,
.mcp/memory.jsonl, named with its own marker. To have a call in flight for as long as it likes, a
story stops the server (SIGSTOP): the sidecar's request waits, unread, in the server's stdin.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import signal
import struct
import subprocess
import termios
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    ROOT,
    DaprRun,
    DaprRuns,
    answer_of,
    calls_for,
    page_command,
    port_open,
    post_run,
    wait_for,
    wait_for_outcome,
)
from tests.llm_server import HAIKU, LLMServer, ToolCall
from tests.test_approval_replicas import FIRST, SECOND, decide, waiting_on
from tests.test_tool_approval import APPROVE, curl, waiting_approval

MCP_SERVICE = page_command("dapr run --app-id durable-agent-mcp", containing="-p 8001")
SECOND_REPLICA = page_command("dapr run --app-id durable-agent-mcp", containing="-p 8002")
ASK_TIME = page_command("curl -X POST http://localhost:8001/run", containing="Tokyo")
ASK_TO_REMEMBER = page_command("curl -X POST http://localhost:8001/run", containing="remember")
SHOW_MEMORY = page_command("cat .mcp/memory.jsonl")
SERVERS = ROOT / "mcp" / "servers.yaml"
MEMORY = ROOT / ".mcp" / "memory.jsonl"
TOKYO = ("get_current_time", {"timezone": "Asia/Tokyo"})
NOW_IN_TOKYO = '"timezone": "Asia/Tokyo"'  # in the tool's structured result


@pytest.fixture(autouse=True)
def servers_installed() -> None:
    """Fail at once, naming the fix, when a server of mcp/servers.yaml is not installed."""
    for command in (ROOT / ".mcp/venv/bin/mcp-server-time", ROOT / ".mcp/node/node_modules/.bin/mcp-server-memory"):
        if not command.exists():
            pytest.fail(f"{command} is missing: run `make setup` (the memory server needs Node.js 20 or later)")


def remember(marker: str) -> ToolCall:
    return "create_entities", {
        "entities": [{"name": f"haiku {marker}", "entityType": "haiku", "observations": [HAIKU]}]
    }


def remembered(marker: str) -> list[dict[str, Any]]:
    """The entities named with `marker` in the memory server's file, as the page's `cat` shows it."""
    shown = subprocess.run(shlex.split(SHOW_MEMORY), cwd=ROOT, capture_output=True, text=True, timeout=30)
    lines = shown.stdout.splitlines() if shown.returncode == 0 else []
    return [e for e in map(json.loads, lines) if e["type"] == "entity" and e["name"] == f"haiku {marker}"]


def unread_bytes_on_stdin(pid: int) -> int:
    """What the sidecar has written to the server's stdin that the server has not read. The stdin pipe
    is fd 0, but a server of the mcp 2.x SDK moves it to a duplicate and puts /dev/null at fd 0 (so
    that a stray read cannot eat a request): then it is the pipe that server only reads."""
    fds = Path(f"/proc/{pid}/fd")
    stdin = fds / "0"
    if not os.readlink(stdin).startswith("pipe:"):
        (stdin,) = [f for f in fds.iterdir() if os.readlink(f).startswith("pipe:") and not os.lstat(f).st_mode & 0o222]
    fd = os.open(stdin, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    finally:
        os.close(fd)


def start_task(command: str) -> str:
    return curl(command)["instance_id"]


def entry(service: DaprRun, instance_id: str) -> list[dict[str, Any]]:
    return service.get_state("agent-workflow", f"scribe:_workflow_{instance_id}")["messages"]


def server_pid(service: DaprRun, name: str) -> int:
    """The pid of the MCP server with `name` in its command line that the service's sidecar started."""

    def found() -> int | None:
        for proc in Path("/proc").iterdir():
            try:
                command = (proc / "cmdline").read_bytes().split(b"\0")
                parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            if parent == service.sidecar["daprdPid"] and any(p.endswith(f"/{name}".encode()) for p in command[:2]):
                return int(proc.name)
        return None

    return wait_for(found, 30, f"the {name} process")


@contextlib.contextmanager
def stopped_server(service: DaprRun, name: str, then: signal.Signals) -> Iterator[int]:
    """The sidecar's server `name` stopped (SIGSTOP) for the block, its pid given, then sent `then`: a
    call made meanwhile waits, unread, in its stdin."""
    pid = server_pid(service, name)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, then)


@pytest.fixture
def start_mcp_service(dapr_env: dict[str, str]) -> Iterator[Callable[[], DaprRun]]:
    services = DaprRuns(MCP_SERVICE, "mcp-service")
    yield lambda: services.start({**dapr_env, "APPROVAL_TIMEOUT_SECONDS": "600"})
    services.stop_all()


@pytest.fixture
def memory() -> Iterator[Path]:
    """The memory server's file, put back as it was after the story."""
    kept = MEMORY.read_bytes() if MEMORY.exists() else None
    yield MEMORY
    MEMORY.unlink(missing_ok=True)
    if kept is not None:
        MEMORY.write_bytes(kept)


def test_a_read_tools_result_reaches_the_model_and_the_runs_entry(
    start_mcp_service: Callable[[], DaprRun], llm: LLMServer
) -> None:
    service = start_mcp_service()
    llm.state.tool_call = TOKYO

    instance_id = start_task(ASK_TIME)
    outcome = wait_for_outcome(f"/agent/instances/{instance_id}", 120)

    assert outcome["runtime_status"] == "COMPLETED", outcome
    assert calls_for(llm, "What time is it in Tokyo?") == 2
    told = llm.state.chat_requests()[-1].body["messages"][-1]
    assert told["role"] == "tool" and NOW_IN_TOKYO in told["content"] and '"datetime": "' in told["content"]
    assert NOW_IN_TOKYO in answer_of(outcome)
    messages = entry(service, instance_id)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["tool_calls"][0]["function"]["name"] == "get_current_time"
    assert "Asia/Tokyo" in messages[2]["content"]


def test_a_write_waits_for_its_approval_then_changes_the_servers_state_once(
    start_mcp_service: Callable[[], DaprRun], llm: LLMServer, memory: Path
) -> None:
    service = start_mcp_service()
    marker = uuid.uuid4().hex[:8]
    llm.state.tool_call = remember(marker)

    instance_id = start_task(ASK_TO_REMEMBER)
    approval = waiting_approval(instance_id)
    assert approval["step_name"] == "create_entities"
    assert remembered(marker) == []
    curl(APPROVE.replace("<approval-id>", approval["approval_request_id"]))
    outcome = wait_for_outcome(f"/agent/instances/{instance_id}", 120)

    assert outcome["runtime_status"] == "COMPLETED", outcome
    assert remembered(marker) == [
        {"type": "entity", "name": f"haiku {marker}", "entityType": "haiku", "observations": [HAIKU]}
    ]
    assert calls_for(llm, "remember it") == 2
    assert f"haiku {marker}" in entry(service, instance_id)[2]["content"]  # the server's answer: what it created


@pytest.mark.parametrize("victim", ["appPid", "daprdPid"])
def test_kill_9_during_an_approved_write_completes_the_run_and_the_write_is_made_again(
    start_mcp_service: Callable[[], DaprRun], llm: LLMServer, memory: Path, victim: str
) -> None:
    """The call's result was never saved, so the restarted sidecar makes the call again: at least once.
    The memory server keeps an entity once by name, so its state holds one; its answer to the second
    call, nothing created, is the result the run saved. A tool that is not idempotent would write twice."""
    service = start_mcp_service()
    marker = uuid.uuid4().hex[:8]
    llm.state.tool_call = remember(marker)
    instance_id = start_task(ASK_TO_REMEMBER)
    approval = waiting_approval(instance_id)
    # SIGCONT after: the server reads the call, writes, and finds no one to answer.
    with stopped_server(service, "mcp-server-memory", then=signal.SIGCONT) as memory_server:
        curl(APPROVE.replace("<approval-id>", approval["approval_request_id"]))
        wait_for(lambda: unread_bytes_on_stdin(memory_server) > 0, 60, "the approved call to reach the server")
        os.kill(service.sidecar[victim], signal.SIGKILL)
        wait_for(lambda: service.process.poll() is not None, 60, "`dapr run` to end after the kill")
        service.stop()
    wait_for(lambda: remembered(marker), 30, "the first call's write")

    restarted = start_mcp_service()
    outcome = wait_for_outcome(f"/agent/instances/{instance_id}", 180)

    saved = entry(restarted, instance_id)[2]["content"]
    print(f"\nkilled {victim}: {len(remembered(marker))} entity, the saved result: {saved[:200]}")
    assert outcome["runtime_status"] == "COMPLETED", outcome
    assert len(remembered(marker)) == 1
    assert f"haiku {marker}" not in saved  # the second call created nothing: the first one had
    assert calls_for(llm, "remember it") == 2


def test_a_server_killed_between_calls_is_started_again_and_the_call_made(
    start_mcp_service: Callable[[], DaprRun], llm: LLMServer
) -> None:
    service = start_mcp_service()
    llm.state.tool_call = TOKYO
    time_server = server_pid(service, "mcp-server-time")
    os.kill(time_server, signal.SIGKILL)

    instance_id = start_task(ASK_TIME)
    outcome = wait_for_outcome(f"/agent/instances/{instance_id}", 120)

    assert outcome["runtime_status"] == "COMPLETED", outcome
    assert NOW_IN_TOKYO in answer_of(outcome)
    assert server_pid(service, "mcp-server-time") != time_server
    assert calls_for(llm, "What time is it in Tokyo?") == 2


def test_a_server_killed_with_the_call_in_its_stdin_is_called_again_or_the_run_fails_saying_so(
    start_mcp_service: Callable[[], DaprRun], llm: LLMServer
) -> None:
    """Which of the two, daprd's MCP client decides by a race (service_runner/mcp_failures.py); what
    never happens is a run that hands the model an error for an answer the server never gave."""
    service = start_mcp_service()
    llm.state.tool_call = TOKYO
    with stopped_server(service, "mcp-server-time", then=signal.SIGKILL) as time_server:
        instance_id = start_task(ASK_TIME)
        wait_for(lambda: unread_bytes_on_stdin(time_server) > 0, 60, "the call to reach the time server")
    outcome = wait_for_outcome(f"/agent/instances/{instance_id}", 120)

    print(f"\nserver killed mid-call: {outcome['runtime_status']}")
    if outcome["runtime_status"] == "COMPLETED":  # the connection reported closed: daprd called again
        assert NOW_IN_TOKYO in answer_of(outcome)
        assert calls_for(llm, "What time is it in Tokyo?") == 2
    else:
        assert outcome["runtime_status"] == "FAILED", outcome
        reason = outcome["failure_details"]["message"]
        assert 'The MCP server did not answer: call-tool: initial call failed for "time"' in reason, reason
        assert reason.endswith('calling "tools/call": EOF (tool "get_current_time")'), reason
        assert calls_for(llm, "What time is it in Tokyo?") == 1


def test_a_hanging_server_is_given_30_seconds_then_the_run_fails_saying_so(
    start_mcp_service: Callable[[], DaprRun], llm: LLMServer
) -> None:
    """service_runner/mcp_failures.py: no second LLM call on an answer the server never gave."""
    service = start_mcp_service()
    llm.state.tool_call = TOKYO
    with stopped_server(service, "mcp-server-time", then=signal.SIGCONT):
        instance_id = start_task(ASK_TIME)
        outcome = wait_for_outcome(f"/agent/instances/{instance_id}", 120)

    assert outcome["runtime_status"] == "FAILED", outcome
    reason = outcome["failure_details"]["message"]
    assert reason.startswith("Agent Scribe workflow failed: The MCP server did not answer: "), reason
    assert '"time": context deadline exceeded (tool "get_current_time")' in reason, reason
    assert calls_for(llm, "What time is it in Tokyo?") == 1


@pytest.fixture
def servers_file() -> Iterator[Path]:
    """mcp/servers.yaml, put back as it was after the story changes it."""
    kept = SERVERS.read_bytes()
    yield SERVERS
    SERVERS.write_bytes(kept)


def failed_start(env: dict[str, str]) -> str:
    """The log of the page's command, which must exit on its own."""
    run = DaprRun(MCP_SERVICE, env, "mcp-service-refused")
    try:
        wait_for(lambda: run.process.poll() is not None, 90, "the MCP service to refuse to start")
    finally:
        run.stop()
    return run.log()


def test_a_server_that_cannot_start_stops_the_service_naming_it(dapr_env: dict[str, str], servers_file: Path) -> None:
    servers_file.write_text(servers_file.read_text().replace('"UTC"', '"Mars/Olympus"'))

    log = failed_start(dapr_env)

    assert 'Fatal error from runtime: MCPServer \\"time\\": failed to register workflows' in log, log[-3000:]
    # The sidecar keeps no server's stderr: the page's advice, running the command, shows why.
    command = SERVERS.read_text().split("command: ")[1].split()[0]
    told = subprocess.run([command, "--local-timezone", "Mars/Olympus"], cwd=ROOT, capture_output=True, text=True)
    assert "invalid --local-timezone 'Mars/Olympus'" in told.stderr


def test_an_approval_naming_a_tool_no_server_offers_stops_the_service(
    dapr_env: dict[str, str], servers_file: Path
) -> None:
    servers_file.write_text(servers_file.read_text().replace("create_entities,", "create_entitys,"))

    log = failed_start(dapr_env)

    assert "names create_entitys, which no server offers" in log, log[-3000:]


def remember_the_marker(task: str) -> ToolCall:
    """The write a task ending in `(<marker>)` asks for."""
    return remember(task.rsplit("(", 1)[1].rstrip(").\n "))


def test_two_replicas_take_tasks_and_approvals_through_either_and_each_write_is_made_once(
    dapr_env: dict[str, str], llm: LLMServer, memory: Path
) -> None:
    """Each replica's sidecar starts servers of its own; both memory servers keep .mcp/memory.jsonl. The
    approvals are given one at a time: the memory server reads the whole file and writes it back on
    each write, so two at once could lose one (docs/mcp.md)."""
    replicas = [(MCP_SERVICE, FIRST), (SECOND_REPLICA, SECOND)]
    started = [
        DaprRun(command, {**dapr_env, "APPROVAL_TIMEOUT_SECONDS": "600"}, "mcp-replica") for command, _ in replicas
    ]
    try:
        for run, (_, url) in zip(started, replicas, strict=True):
            run.wait_until_ready(url)
        llm.state.tool_call = remember_the_marker
        batch = uuid.uuid4().hex[:6]
        markers = [f"{batch}-{n}" for n in range(6)]
        posted = {
            marker: post_run(f"Write a haiku about programming and remember it ({marker}).", url)["instance_id"]
            for marker, (_, url) in zip(markers, replicas * 3, strict=True)
        }
        for n, instance_id in enumerate(posted.values()):
            via = replicas[(n + 1) % 2][1]  # the other replica than the one the task was posted to
            (approval,) = waiting_on(via, [instance_id])
            answer = decide(via, approval)
            assert answer.status_code == 200, answer.text
            outcome = wait_for_outcome(f"/agent/instances/{instance_id}", 120, service_url=via)
            assert outcome["runtime_status"] == "COMPLETED", outcome
    finally:
        for run in started:
            run.stop()

    counts = {marker: len(remembered(marker)) for marker in markers}
    print(f"\nentities per run, tasks and approvals spread over two replicas: {counts}")
    assert counts == dict.fromkeys(markers, 1)
    assert all(calls_for(llm, f"({marker})") == 2 for marker in markers)


# dapr-agents' own AgentRunner, serving an agent that has MCP servers, as service_runner/mcp_after_listen.py fixes it.
UPSTREAM_SERVE = """
from dapr_agents import DurableAgent
from dapr_agents.workflow.runners import AgentRunner
AgentRunner().serve(DurableAgent(name="Scribe", system_prompt="You are a helpful assistant"), host="127.0.0.1")
"""
STILL_WAITING = "waiting for application to listen on port 8001"


def test_dapr_agents_alone_still_connects_its_mcp_servers_before_its_app_listens_and_never_serves(
    dapr_env: dict[str, str],
) -> None:
    """dapr-agents 1.0.9's AgentRunner.serve waits for each server's tool list before its app listens;
    daprd 1.18 runs no workflow for an app with an app port until it listens. When dapr-agents
    connects after listening, service_runner/mcp_after_listen.py can go."""
    sidecar = MCP_SERVICE.split(" -- ")[0].replace("--log-level warn", "--log-level info")  # to see it wait
    upstream = f"{sidecar} -- python -c {shlex.quote(UPSTREAM_SERVE)}"
    run = DaprRun(upstream, dapr_env, "mcp-upstream-serve")
    try:
        wait_for(lambda: run.log().count(STILL_WAITING) >= 2, 60, "the sidecar to wait for the app twice")
        assert not port_open(8001), run.log()[-3000:]
    finally:
        run.stop()


def test_a_tool_without_arguments_is_sent_null_arguments_which_the_memory_server_refuses(
    start_mcp_service: Callable[[], DaprRun], llm: LLMServer
) -> None:
    """daprd 1.18.2 drops an empty argument map on its way to the server, and the MCP SDK sends
    `"arguments": null`, which the memory server (zod) refuses: read_graph cannot be called (docs/mcp.md,
    "Known limits"). When this story fails, the page's limit can go."""
    start_mcp_service()
    llm.state.tool_call = ("read_graph", {})

    instance_id = start_task(ASK_TIME)
    outcome = wait_for_outcome(f"/agent/instances/{instance_id}", 120)

    assert outcome["runtime_status"] == "COMPLETED", outcome
    assert "Invalid input: expected record, received null" in answer_of(outcome), answer_of(outcome)
