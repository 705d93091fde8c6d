"""The HTTP door: an ASGI middleware in front of the agent's routes that lets in only runnable tasks."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service_runner.task_checks import MAX_BODY_BYTES, BadTaskError, check_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


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
