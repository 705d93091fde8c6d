"""Logs are for people: what the service prints at start is explained in the docs, and a condition it
handles is no ERROR."""

from __future__ import annotations

import logging
import re
import socket

import pytest
from dapr.ext.workflow import DaprWorkflowClient

from service_runner.steady_reads import SDK_LOGGER, TORN_READ
from tests.conftest import ROOT, DaprRun

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
