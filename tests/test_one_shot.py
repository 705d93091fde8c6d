"""The one-shot: `dapr run ... python durable_agent_minimal.py` writes a haiku and exits."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import time

import requests

from tests.conftest import ONE_SHOT, ROOT, TASK, strip_ansi
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


def test_make_run_without_a_key_runs_on_the_echo_component_and_says_so(dapr_env: dict[str, str]) -> None:
    env = {k: v for k, v in dapr_env.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}

    result = subprocess.run(shlex.split(MAKE_RUN), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    output = strip_ansi(result.stdout + result.stderr)
    assert result.returncode == 0, output
    assert output.count("No OPENAI_API_KEY: this run uses Dapr's conversation.echo component") == 2
    assert "Traceback" not in output
    answer = output.split("Assistant(assistant):", 1)[1]
    assert "Your name is Assistant." in answer and TASK in answer  # the prompt, echoed by Dapr
    # Where to look: the run's workflow id, and the Zipkin page of its trace, which holds that workflow.
    instance_id = re.search(r"^Workflow id: ([0-9a-f]{32})$", output, re.MULTILINE)
    trace_id = re.search(r"^Its trace: +http://localhost:9411/zipkin/traces/([0-9a-f]{32})$", output, re.MULTILINE)
    assert instance_id and trace_id, output[-2000:]
    trace = requests.get(f"http://127.0.0.1:9411/api/v2/trace/{trace_id[1]}", timeout=5).json()
    workflow = [s for s in trace if s["name"] == "orchestration||dapr.agents.assistant.workflow"]
    assert [s["tags"]["durabletask.task.instance_id"] for s in workflow] == [instance_id[1]]
    assert any(s["name"] == "chat" for s in trace)  # the agent's own span of its LLM call
