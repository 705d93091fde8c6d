"""The one-shot: `dapr run ... python durable_agent_minimal.py` writes a haiku and exits."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import time

import requests

from tests.conftest import LOCAL_MODEL, ONE_SHOT, ROOT, TASK, local_model_env, model_calls, strip_ansi
from tests.llm_server import HAIKU, LLMServer
from tests.pages import page_command

MAKE_RUN = page_command("make run")


def run_one_shot(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], str, float]:
    started = time.monotonic()
    result = subprocess.run(shlex.split(ONE_SHOT), cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    return result, strip_ansi(result.stdout + result.stderr), time.monotonic() - started


def test_the_one_shot_prints_the_models_haiku_and_exits_0(llm: LLMServer, dapr_env: dict[str, str]) -> None:
    result, output, _ = run_one_shot(dapr_env)

    assert result.returncode == 0, output
    for line in HAIKU.splitlines():
        assert f"== APP == {line}" in output
    assert "Traceback" not in output
    # One task, one LLM call: no second call to summarize the run for memory (README, "The service").
    requests_ = llm.state.chat_requests()
    assert [r.user_text for r in requests_] == [TASK], [r.body for r in requests_]
    assert requests_[0].headers["Authorization"] == f"Bearer {dapr_env['OPENAI_API_KEY']}"


def test_with_the_llm_unreachable_the_one_shot_exits_non_zero_saying_why(dapr_env: dict[str, str]) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]

    result, output, elapsed = run_one_shot({**dapr_env, "OPENAI_BASE_URL": f"http://127.0.0.1:{closed_port}/v1"})

    assert result.returncode != 0, output
    assert "failed conversing with component llm-provider" in output
    assert "failed to reach API server" in output
    assert "The agent's workflow did not complete" in output
    # resources/resiliency.yaml retries the LLM for about 90 s in all before a run fails: bounded, no hang.
    assert elapsed < 150, f"took {elapsed:.0f}s"


# What the Dapr CLI prints around a one-shot run: the sidecar's start and both exits.
INFO, DONE = "\u2139\ufe0f", "\u2705"  # its two marks, an information sign and a check mark
DAPR_CLI_LINES = [
    rf"{INFO}  Starting Dapr with id durable-agent-minimal\. HTTP Port: \d+\. gRPC Port: \d+",
    rf"{INFO}  Checking if Dapr sidecar is listening on (HTTP|GRPC) port \d+",
    rf"{INFO}  Dapr sidecar is up and running\.",
    rf"{INFO}  Updating metadata for appPID: \d+",
    rf"{INFO}  Updating metadata for app command: python durable_agent_minimal\.py",
    rf"{DONE}  You're up and running! Both Dapr and your app logs will appear here\.",
    rf"{DONE}  Exited App successfully",
    rf"{INFO}  ",
    r"terminated signal received: shutting down",
    rf"{DONE}  Exited Dapr successfully",
    r"",
]
# What `make up` prints when the stack is up already, as in `make test`, or it starts a service.
STACK_LINES = [
    r"Starting the local stack \(logs in .+\):",
    r"  (postgres|redis|placement|scheduler|zipkin|model): "
    r"(already running \(pid \d+, port \d+\)|up on 127\.0\.0\.1:\d+ \(pid \d+, \d+s\))",
]
SEPARATOR = "-" * 80


def test_make_run_without_a_key_prints_the_task_the_local_models_answer_and_where_to_look() -> None:
    before = len(model_calls())

    result = subprocess.run(
        shlex.split(MAKE_RUN), cwd=ROOT, env=local_model_env(), capture_output=True, text=True, timeout=300
    )

    output = strip_ansi(result.stdout + result.stderr)
    assert result.returncode == 0, output
    assert model_calls()[before:] == [200]  # one task, one call, and the model answered it
    lines = output.splitlines()
    # The agent's part: the task, then the model's answer, each under its heading.
    conversation = [line.removeprefix("== APP == ").rstrip() for line in lines if line.startswith("== APP ==")]
    assert conversation[:6] == ["user:", TASK, "", SEPARATOR, "", "Assistant(assistant):"], conversation
    assert conversation[-3:] == ["", SEPARATOR, ""], conversation
    answer = conversation[6:-3]
    assert "".join(answer).strip() and answer != [TASK], conversation
    # Around it: which model answers, the stack, the CLI's own lines, and where to look. Nothing else.
    name = LOCAL_MODEL["LOCAL_MODEL_NAME"]
    model_lines = [
        rf"Model: {name}, on this machine \(llama\.cpp on 127\.0\.0\.1:\d+\): no OPENAI_API_KEY is set\.",
        r"       A 135M-parameter model: expect a short, odd haiku\. For OpenAI: export OPENAI_API_KEY=sk-\.\.\.",
    ]
    others = [line for line in lines if not line.startswith("== APP ==")]
    allowed = [*STACK_LINES, *model_lines, *DAPR_CLI_LINES, r"Workflow id: [0-9a-f]{32}", r"Its trace: +http://\S+"]
    assert [line for line in others if not any(re.fullmatch(p, line) for p in allowed)] == [], output
    assert sum(bool(re.fullmatch(model_lines[0], line)) for line in lines) == 1
    # Where to look: the run's workflow id, and the Zipkin page of its trace, which holds that workflow.
    instance_id = re.search(r"^Workflow id: ([0-9a-f]{32})$", output, re.MULTILINE)
    trace_id = re.search(r"^Its trace: +http://localhost:9411/zipkin/traces/([0-9a-f]{32})$", output, re.MULTILINE)
    assert instance_id and trace_id, output[-2000:]
    trace = requests.get(f"http://127.0.0.1:9411/api/v2/trace/{trace_id[1]}", timeout=5).json()
    workflow = [s for s in trace if s["name"] == "orchestration||dapr.agents.assistant.workflow"]
    assert [s["tags"]["durabletask.task.instance_id"] for s in workflow] == [instance_id[1]]
    assert any(s["name"] == "/dapr.proto.runtime.v1.dapr/conversealpha2" for s in trace)  # the call to the model
