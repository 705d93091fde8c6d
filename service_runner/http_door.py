"""The HTTP door: an ASGI middleware that checks what every route of the agent is sent.

Each route that starts or touches a run, decides an approval, or brings a schedule's tick gets the
same rules and the same clear 4xx before dapr-agents sees the request; anything else it passes on
(FastAPI answers 404 or 405 itself).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service_runner.task_checks import MAX_BODY_BYTES, BadTaskError, check_body, parse_json

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# POST routes that start a run from a task in the body.
TASK_ROUTES = ("/run", "/run/stream")
# Routes of one run: its status, its stream, and the two POST actions that take no body.
RUN_ROUTE = re.compile(r"/agent/instances/(?P<instance_id>[^/]*)(?P<action>/stream|/terminate|/purge)?")
# Instance ids this service makes are 32 hex digits; Dapr's own allow letters, digits, - and _.
INSTANCE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# An approval's route: dapr-agents names each approval with a UUID made from the run and the tool call.
APPROVAL_PATH = "/hitl/approvals/{approval_request_id}/respond"
APPROVAL_ROUTE = re.compile(r"/hitl/approvals/(?P<approval_id>[^/]*)/respond")
APPROVAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Where Dapr's scheduler sends a job's tick (schedules.py); a job's name is an instance id's letters.
JOB_PATH = "/job/{name}"
JOB_ROUTE = re.compile(r"/job/(?P<name>[^/]*)")
# A decision is a yes or no and a short reason; nothing longer needs to reach the workflow's history.
MAX_DECISION_BYTES = 16 * 1024
MAX_REASON_CHARS = 1000
# As the IETF draft and Stripe have it: a string of the client's choosing, 255 characters at most.
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


class HttpDoor:
    """Lets a request through to the agent's routes only if it is well formed for its route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Only an agent with tools has the approval routes (runner.py); without them FastAPI answers 404.
        self.approvals = any(getattr(route, "path", None) == APPROVAL_PATH for route in getattr(app, "routes", ()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            receive = await self._check(scope, receive)
        except BadTaskError as bad:
            await _send_json(send, bad.status, {"detail": bad.detail})
            return
        await self.app(scope, receive, send)

    async def _check(self, scope: Scope, receive: Receive) -> Receive:
        """Raise BadTaskError for a request its route would not run; return how to read its body."""
        path, method = scope["path"].rstrip("/") or "/", scope["method"]
        headers = dict(scope["headers"])
        if path in TASK_ROUTES and method == "POST":
            if path == "/run" and b"idempotency-key" in headers:
                _check_idempotency_key(headers[b"idempotency-key"])
            return _replay(await _read_task(headers, receive), receive)
        if self.approvals and (approval_route := APPROVAL_ROUTE.fullmatch(path)) and method == "POST":
            if not APPROVAL_ID.fullmatch(approval_route["approval_id"]):
                raise BadTaskError(404, "no approval has that id (an id is a UUID, as GET /hitl/approvals lists it)")
            return _replay(await _read_decision(headers, receive), receive)
        if (job_route := JOB_ROUTE.fullmatch(path)) and method == "POST":
            if not INSTANCE_ID.fullmatch(job_route["name"]):
                raise BadTaskError(404, "no schedule has that name (a name is letters, digits, - and _)")
            return _replay(await _read_json(headers, receive, "the job's data"), receive)
        run_route = RUN_ROUTE.fullmatch(path)
        if run_route is None:
            return receive
        if not INSTANCE_ID.fullmatch(run_route["instance_id"]):
            raise BadTaskError(404, "no run has that id (an id is letters, digits, - and _)")
        if method == "POST" and run_route["action"] in ("/terminate", "/purge"):
            if await _read_body(headers, receive, MAX_BODY_BYTES):
                raise BadTaskError(400, f"{run_route['action'][1:]} takes no body")
            return _replay(b"", receive)
        return receive


def _check_idempotency_key(value: bytes) -> None:
    if not IDEMPOTENCY_KEY.fullmatch(value.decode("latin-1")):
        raise BadTaskError(400, "Idempotency-Key must be 1 to 255 printable ASCII characters, without spaces")


async def _read_task(headers: dict[bytes, bytes], receive: Receive) -> bytes:
    media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if media_type != b"application/json":
        raise BadTaskError(415, "send the task as JSON, with Content-Type: application/json")
    body = await _read_body(headers, receive, MAX_BODY_BYTES)
    check_body(body)
    return body


async def _read_json(headers: dict[bytes, bytes], receive: Receive, what: str, limit: int = MAX_BODY_BYTES) -> bytes:
    if headers.get(b"content-type", b"").split(b";")[0].strip().lower() != b"application/json":
        raise BadTaskError(415, f"send {what} as JSON, with Content-Type: application/json")
    body = await _read_body(headers, receive, limit)
    parse_json(body)
    return body


async def _read_decision(headers: dict[bytes, bytes], receive: Receive) -> bytes:
    body = await _read_json(headers, receive, "the decision", MAX_DECISION_BYTES)
    decision = parse_json(body)
    shape = '{"approved": true or false, "reason": "..." (optional)}'
    if not isinstance(decision, dict) or not isinstance(decision.get("approved"), bool):
        raise BadTaskError(422, f"the body must be a JSON object {shape}")
    if unknown := sorted(set(decision) - {"approved", "reason"}):
        raise BadTaskError(422, f"unknown field {json.dumps(unknown[0])}: the body is {shape}")
    reason = decision.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BadTaskError(422, '"reason" must be a string')
    if reason is not None and len(reason) > MAX_REASON_CHARS:
        raise BadTaskError(422, f'"reason" is longer than {MAX_REASON_CHARS} characters')
    if reason is not None and any(unicodedata.category(c) in ("Cc", "Cs") and c not in "\t\n" for c in reason):
        raise BadTaskError(422, '"reason" contains control characters (only tab and newline are allowed)')
    return body


async def _read_body(headers: dict[bytes, bytes], receive: Receive, limit: int) -> bytes:
    if int(headers.get(b"content-length", b"0") or 0) > limit:  # the server has checked it is a number
        raise BadTaskError(413, f"the body is larger than {limit} bytes")
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadTaskError(400, "the client went away before sending the whole body")
        body += message.get("body", b"")
        if len(body) > limit:
            raise BadTaskError(413, f"the body is larger than {limit} bytes")
        if not message.get("more_body", False):
            return body


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that hands the app the body already read, then waits as the original would."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()  # after the body: wait for the client's disconnect
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _send_json(send: Send, status: int, content: dict[str, str]) -> None:
    data = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
