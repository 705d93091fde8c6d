"""Starts that happen at most once: a run's instance id derived from what names the request.

A retried `POST /run` with the same Idempotency-Key, or a published message delivered again (the
same CloudEvent source and id), maps to the same workflow instance id. Dapr keeps that instance,
so the check survives restarts of the agent and its sidecar, for as long as the run's workflow
state is kept (config/dapr-config.yaml: a day after it completes, a week after it fails).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from dapr_agents.streaming.keys import MESSAGE_METADATA

from service_runner.steady_reads import SteadyReadsClient

log = logging.getLogger("service_runner")


def run_id(*names: str) -> str:
    """The instance id of the one run that `names` may start: 32 hex digits, like dapr-agents' own."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:32]


class OncePerMessageClient(SteadyReadsClient):
    """A workflow client that starts no second run for a message it has already run.

    dapr-agents schedules a published task with no instance id, and remembers the messages it has
    seen for 60 s in process memory only; this gives each message its own instance id instead.
    """

    def schedule_new_workflow(
        self, workflow: Any, *, input: Any = None, instance_id: str | None = None, **kw: Any
    ) -> str:
        message = input.get(MESSAGE_METADATA) if isinstance(input, dict) else None
        if instance_id is None and isinstance(message, dict) and message.get("id"):
            instance_id = run_id("message", str(message.get("source")), str(message["id"]))
            if self.get_workflow_state(instance_id, fetch_payloads=False) is not None:
                log.warning(
                    "Message %s on %s has run already, as %s; not again",
                    message["id"],
                    message.get("topic"),
                    instance_id,
                )
                return instance_id
        return super().schedule_new_workflow(workflow, input=input, instance_id=instance_id, **kw)
