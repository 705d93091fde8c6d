"""The door checks: only a runnable task gets in, by POST /run or by the agent's topic.

dapr-agents schedules a workflow for any JSON object it is sent, even `{}`, and Dapr has no policy
for what an app's own routes or a streaming subscription accept, so this one check lives in the app.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import replace
from typing import Any

from dapr.clients.grpc.subscription import Subscription
from dapr_agents import DurableAgent
from dapr_agents.types.workflow import PubSubRouteSpec
from dapr_agents.workflow.runners import AgentRunner
from dapr_agents.workflow.utils.subscription import MessageContext

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The agent prints each task, and `dapr run` stops reading an app's output at a line over 64 KiB,
# which freezes the agent; 32 KiB of UTF-8 keeps any task line well below that.
MAX_TASK_BYTES = 32 * 1024
# Room for a maximal task written with JSON's \uXXXX escapes (up to 12 bytes per character).
MAX_BODY_BYTES = 12 * MAX_TASK_BYTES
# Where the agent's topic moves a message it cannot run; nothing consumes it (README, "Bad input").
DEAD_LETTER = "assistant.topic.deadletter"


class BadTaskError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def check_body(body: bytes) -> None:
    """Raise BadTaskError unless `body` is JSON that passes check_payload."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadTaskError(400, f"the body is not JSON ({error})") from None
    check_payload(payload)


def check_payload(payload: Any) -> None:
    """Raise BadTaskError unless `payload` is an object whose `task` is text worth running."""
    if not isinstance(payload, dict):
        raise BadTaskError(422, 'the body must be a JSON object: {"task": "..."}')
    task = payload.get("task")
    if not isinstance(task, str):
        raise BadTaskError(422, '"task" is required and must be a string')
    if not task.strip():
        raise BadTaskError(422, '"task" is empty')
    if len(task.encode("utf-8", "surrogatepass")) > MAX_TASK_BYTES:
        raise BadTaskError(413, f'"task" is longer than {MAX_TASK_BYTES} bytes of UTF-8')
    if any(unicodedata.category(c) == "Cs" for c in task):
        raise BadTaskError(422, '"task" contains a lone UTF-16 surrogate, which is not text')
    if any(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in task):
        raise BadTaskError(422, '"task" contains control characters (only tab and newline are allowed)')


class TaskGuard:
    """ASGI middleware that lets through only POST `path` requests that pass check_body."""

    def __init__(self, app: ASGIApp, path: str) -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != self.path:
            await self.app(scope, receive, send)
            return
        try:
            body = await self._checked_body(scope, receive)
        except BadTaskError as bad:
            await _send_json(send, bad.status, {"detail": bad.detail})
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the client's disconnect
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def _checked_body(scope: Scope, receive: Receive) -> bytes:
        headers = dict(scope["headers"])
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media_type != b"application/json":
            raise BadTaskError(415, "send the task as JSON, with Content-Type: application/json")
        if int(headers.get(b"content-length", b"0") or 0) > MAX_BODY_BYTES:
            raise BadTaskError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadTaskError(400, "the client went away before sending the whole body")
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                raise BadTaskError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
            if not message.get("more_body", False):
                check_body(body)
                return body


async def _send_json(send: Send, status: int, content: dict[str, str]) -> None:
    data = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


log = logging.getLogger("task_guard")


def _runnable(payload: Any, context: MessageContext) -> bool:
    try:
        check_payload(payload)
    except BadTaskError as bad:
        event = context.event
        log.warning("Rejected message %s on %s: %s; moved to %s", event.id, event.topic, bad.detail, DEAD_LETTER)
        return False
    return True


class _NoRawDump(logging.Filter):
    """dapr-agents logs a turned-away message in full; one line over 64 KiB freezes the app (see above)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No binding accepted message")


logging.getLogger("dapr_agents.workflow.utils.subscription").addFilter(_NoRawDump())


_open_stream = Subscription.start


def _open_stream_active(subscription: Subscription) -> None:
    """Mark the stream active before gRPC reads its requests, not after (as dapr 1.18.3 does).

    Otherwise, about one start in two, the request iterator ends after its first request, daprd
    drops the stream (EOF) and the SDK reconnects; a message published within the next few seconds
    is read by the Redis poller of the dropped subscription and waits 60 s or more for redelivery.
    dapr 1.19 fixes this; dapr-agents 1.0.9 requires dapr < 1.19.
    """
    subscription._set_stream_active()
    _open_stream(subscription)


Subscription.start = _open_stream_active  # type: ignore[method-assign]


class GuardedAgentRunner(AgentRunner):
    """An AgentRunner whose agent topic turns away what POST /run would, onto a dead-letter topic.

    Dapr takes a streaming subscription's dead-letter topic from the app only, and dapr-agents 1.0.9
    (pinned) sets none, so this overrides the private hook that builds the subscription.
    """

    def _build_pubsub_specs(self, agent: DurableAgent, config: Any) -> list[PubSubRouteSpec]:
        return [
            replace(spec, dead_letter_topic=DEAD_LETTER, payload_filter=_runnable)
            if spec.topic == config.agent_topic
            else spec
            for spec in super()._build_pubsub_specs(agent, config)
        ]
