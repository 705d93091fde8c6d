"""Two warnings dapr-agents' tracing logs for conditions it handles, dropped before anyone reads them.

With tracing on (the OTEL_ variables of docs/observability.md), dapr-agents 1.0.9 (pinned) logs
- "Attempting to instrument while already instrumented" (OpenTelemetry's instrumentor): it
  instruments gRPC clients, which dapr-ext-workflow 1.18 has instrumented on import already;
- "No context found for instance ..." twice per workflow step: it looks up a trace context in
  process memory that a run started elsewhere (another replica, before a restart, a schedule)
  never put there, then carries on without it.
Neither asks anything of a person, and the second comes with every run. tests/test_logs.py fails
when dapr-agents stops logging either, and this module can go.
"""

from __future__ import annotations

import logging

INSTRUMENTOR_LOGGER = "opentelemetry.instrumentation.instrumentor"
ALREADY_INSTRUMENTED = "Attempting to instrument while already instrumented"
CONTEXT_LOGGER = "dapr_agents.observability.context_storage"
NO_CONTEXT = "No context found for instance"


def _not_only(message: str) -> logging.Filter:
    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return message not in record.getMessage()

    return Drop()


logging.getLogger(INSTRUMENTOR_LOGGER).addFilter(_not_only(ALREADY_INSTRUMENTED))
logging.getLogger(CONTEXT_LOGGER).addFilter(_not_only(NO_CONTEXT))
