"""`dapr run -f .` starts the service from dapr.yaml, and `dapr stop -f .` stops it."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.conftest import (
    AGENT_TRACING,
    ROOT,
    SERVICE_URL,
    TASK,
    DaprRun,
    dapr_list,
    post_run,
    wait_for,
    wait_for_outcome,
)
from tests.llm_server import LLMServer


def test_dapr_run_f_serves_the_agent_and_dapr_stop_f_stops_it(llm: LLMServer, dapr_env: dict[str, str]) -> None:
    run = DaprRun("dapr run -f .", dapr_env, "run-file", app_id="durable-agent-service")
    try:
        run.wait_until_ready(SERVICE_URL)
        assert wait_for_outcome(post_run(TASK)["status_url"])["runtime_status"] == "COMPLETED"

        stopped = subprocess.run(["dapr", "stop", "-f", "."], cwd=ROOT, env=dapr_env, capture_output=True, text=True)

        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        wait_for(lambda: run.process.poll() is not None, 30, "`dapr run -f .` to exit")
        wait_for(lambda: not dapr_list(), 30, "`dapr list` to show no sidecar")
    finally:
        run.stop()


def test_make_and_the_run_file_switch_on_the_agents_tracing_as_the_readme_says() -> None:
    makefile = (ROOT / "Makefile").read_text()
    make_vars = re.search(r"^export AGENT_TRACING := (.*)$", makefile, re.MULTILINE)[1].split()
    run_file_vars = yaml.safe_load((ROOT / "dapr.yaml").read_text())["common"]["env"]

    assert dict(pair.split("=", 1) for pair in make_vars) == AGENT_TRACING
    assert run_file_vars == AGENT_TRACING
