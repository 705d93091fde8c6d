"""The pub/sub door: a message on the agent's topic that is not a runnable task goes to a dead-letter topic."""

from __future__ import annotations

import logging
from typing import Any

from dapr_agents.workflow.utils.subscription import MessageContext

from service_runner.task_checks import BadTaskError, check_payload

# Where the agent's topic moves a message it cannot run; nothing consumes it (README, "Bad input").
DEAD_LETTER = "assistant.topic.deadletter"

log = logging.getLogger("service_runner")


def runnable(payload: Any, context: MessageContext) -> bool:
    try:
        check_payload(payload)
    except BadTaskError as bad:
        event = context.event
        log.warning("Rejected message %s on %s: %s; moved to %s", event.id, event.topic, bad.detail, DEAD_LETTER)
        return False
    return True


class _NoRawDump(logging.Filter):
    """dapr-agents logs a turned-away message in full, and a line over 64 KiB freezes the app
    (task_checks.MAX_TASK_BYTES)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No binding accepted message")


logging.getLogger("dapr_agents.workflow.utils.subscription").addFilter(_NoRawDump())
