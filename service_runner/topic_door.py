"""The pub/sub door: a message on the agent's topic that is not a runnable task goes to a dead-letter topic.

It also reads a task published as a raw payload (`rawPayload=true`, Dapr's way for producers that
send plain JSON rather than a CloudEvent) as the task it is.
"""

from __future__ import annotations

import logging
from typing import Any

import dapr_agents.workflow.utils.subscription as subscription
from dapr.common.pubsub.subscription import SubscriptionMessage
from dapr_agents.workflow.utils.subscription import MessageContext

from service_runner.task_checks import BadTaskError, check_payload

log = logging.getLogger("service_runner")


def dead_letter(topic: str) -> str:
    """Where an agent's topic moves a message it cannot run; nothing consumes it (docs/http-api.md, "Bad input")."""
    return f"{topic}.deadletter"


def runnable(payload: Any, context: MessageContext) -> bool:
    try:
        check_payload(payload)
    except BadTaskError as bad:
        event = context.event
        moved_to = dead_letter(event.topic)
        log.warning("Rejected message %s on %s: %s; moved to %s", event.id, event.topic, bad.detail, moved_to)
        return False
    return True


class _NoRawDump(logging.Filter):
    """dapr-agents logs a turned-away message in full, and a line over 64 KiB freezes the app
    (task_checks.MAX_TASK_BYTES)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No binding accepted message")


logging.getLogger("dapr_agents.workflow.utils.subscription").addFilter(_NoRawDump())


_read_cloudevent = subscription.extract_cloudevent_data


def _read_raw_payloads_too(message: Any) -> tuple[Any, dict]:
    """A raw JSON object reaches a streaming subscription as an envelope with no specversion and no
    data, its fields as CloudEvent extensions; dapr-agents 1.0.9 reads it as no task at all."""
    data, metadata = _read_cloudevent(message)
    if isinstance(message, SubscriptionMessage) and not message.spec_version() and not message.raw_data():
        data, metadata["headers"] = message.extensions(), {}
    return data, metadata


subscription.extract_cloudevent_data = _read_raw_payloads_too
