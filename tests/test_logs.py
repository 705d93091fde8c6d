"""Logs are for people: what the service prints at start is explained in the docs, and a condition it
handles is no ERROR."""

from __future__ import annotations

import logging
import re
import shlex
import socket
import subprocess

import pytest
from dapr.ext.workflow import DaprWorkflowClient
from dapr_agents.observability.context_storage import get_workflow_context

from service_runner.steady_reads import SDK_LOGGER, TORN_READ
from service_runner.tracing_warnings import ALREADY_INSTRUMENTED, CONTEXT_LOGGER, NO_CONTEXT
from tests.conftest import AGENT_TRACING, ONE_SHOT, ROOT, DaprRun
from tests.llm_server import LLMServer

# The warnings the README's service command prints as it starts, each explained in docs/production.md.
EXPLAINED_AT_START = {
    "mTLS is disabled. Skipping certificate request and tls validation",
    "Graceful shutdown timeout is infinite, will wait indefinitely to shutdown",
}


def test_the_services_start_prints_only_the_warnings_the_docs_explain(service: DaprRun) -> None:
    warnings = re.findall(r'level=(?:warning|error) msg="([^"]*)"', service.log())

    assert set(warnings) == EXPLAINED_AT_START, warnings
    explained = (ROOT / "docs" / "production.md").read_text()
    for warning in EXPLAINED_AT_START:
        assert warning in explained


def test_a_read_the_service_reads_again_is_no_error_while_any_other_failed_read_still_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """steady_reads.py reads a torn read again; dapr-ext-workflow 1.18 logs every failed read as an
    ERROR on its logger first. If the SDK stops logging so, this fails and the filter can go."""
    with socket.socket() as sock:  # a port nothing listens on: the read fails at once
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    client = DaprWorkflowClient(host="127.0.0.1", port=str(closed_port))

    with caplog.at_level(logging.WARNING), pytest.raises(Exception, match=r"UNAVAILABLE|failed to connect"):
        client.get_workflow_state("no-such-run")
    logging.getLogger(SDK_LOGGER).error(f"Unhandled RPC error while fetching workflow state: inbox key {TORN_READ}")

    logged = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert [(name, level) for name, level, _ in logged] == [(SDK_LOGGER, "ERROR")], logged
    assert "Unhandled RPC error while fetching workflow state" in logged[0][2]


def test_dapr_agents_tracing_still_warns_of_what_it_handles_where_service_runner_is_not_there(
    llm: LLMServer, dapr_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """service_runner/tracing_warnings.py drops two warnings of dapr-agents 1.0.9's tracing from the
    service's log (tests/test_observability.py checks it). The one-shot, which has no service_runner,
    still prints the first with tracing on, and dapr-agents still logs the second for a run whose trace
    context this process does not hold (in the one-shot it depends on timing). When either stops, so
    can the filter."""
    tracing = " ".join(f"{name}={value}" for name, value in AGENT_TRACING.items())
    traced_one_shot = ONE_SHOT.replace(" -- python ", f" -- env {tracing} python ")

    result = subprocess.run(shlex.split(traced_one_shot), cwd=ROOT, env=dapr_env, capture_output=True, text=True)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert ALREADY_INSTRUMENTED in output, output
    logger = logging.getLogger(CONTEXT_LOGGER)
    kept = logger.filters[:]
    logger.filters.clear()  # as without service_runner, which this process has imported
    try:
        with caplog.at_level(logging.WARNING, logger=CONTEXT_LOGGER):
            assert get_workflow_context("__workflow_context_no-such-run__") is None
    finally:
        logger.filters[:] = kept
    assert [r.getMessage() for r in caplog.records if r.name == CONTEXT_LOGGER] == [
        f"⚠️ {NO_CONTEXT} __workflow_context_no-such-run__"
    ]
