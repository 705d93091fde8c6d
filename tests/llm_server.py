"""The tests' stand-in for OpenAI: a real HTTP server speaking the Chat Completions protocol.

Dapr's conversation.openai component reaches it exactly as it would reach OpenAI
(POST {OPENAI_BASE_URL}/chat/completions with a bearer key). It records every request and
can be told to answer slowly, fail with a status code, or hold an answer until released, and it
counts the calls it holds at once.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ToolCall = tuple[str, dict[str, Any]]  # a tool's name and its arguments
HAIKU = "Tabs and spaces war,\nthe compiler keeps its peace:\nbuild green at midnight."


@dataclass
class ChatRequest:
    """One request as the server received it."""

    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float = field(default_factory=time.monotonic)

    @property
    def user_text(self) -> str:
        """All user messages' text, joined: what the model was asked."""
        parts = []
        for message in self.body.get("messages", []):
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):
                    content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
                parts.append(str(content))
        return "\n".join(parts)


@dataclass
class Fault:
    """What to do instead of answering at once: fail with `status`, or wait on `release`."""

    status: int | None = None
    release: threading.Event | None = None


@dataclass
class Gathering:
    """Every call waits until `calls` wait at once, or until `deadline` (time.monotonic()) passes."""

    calls: int
    deadline: float
    reached: bool = False


@dataclass
class FakeOpenAI:
    """Server state. Tests change `latency_s`, `reply` and `faults` between requests."""

    latency_s: float = 0.0
    reply: str = HAIKU
    down_until: float = 0.0  # time.monotonic() until which every connection is dropped unanswered
    faults: list[Fault] = field(default_factory=list)
    requests: list[ChatRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0  # chat requests received and not yet answered
    most_in_flight: int = 0
    gathering: Gathering | None = None
    # The tool call to ask for when it is offered, instead of the first tool offered: (name, arguments),
    # or a function of what the model was asked that gives them.
    tool_call: ToolCall | Callable[[str], ToolCall] | None = None

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    def gather(self, calls: int, within_s: float) -> None:
        """Hold each call until `calls` are held at once (then answer them all), or `within_s` passes."""
        with self.lock:
            self.gathering = Gathering(calls, time.monotonic() + within_s)

    def reset_counts(self) -> None:
        with self.lock:
            self.most_in_flight = self.in_flight

    def fail_next(self, times: int, status: int) -> None:
        with self.lock:
            self.faults.extend(Fault(status=status) for _ in range(times))

    def hold_next(self) -> threading.Event:
        """The next request waits until the returned event is set (or the server stops)."""
        release = threading.Event()
        with self.lock:
            self.faults.append(Fault(release=release))
        return release

    def go_down_for(self, seconds: float) -> None:
        """Drop every connection unanswered for `seconds`, as a crashed or unreachable server would."""
        self.down_until = time.monotonic() + seconds

    def chat_requests(self) -> list[ChatRequest]:
        with self.lock:
            return list(self.requests)


def _structured_reply(body: dict[str, Any]) -> str | None:
    """A JSON object for a request that asks for one with response_format, as a real model gives.

    dapr-agents asks for a ConversationSummary ({"summary": string}) after every run when the agent's
    memory is on, as in the benchmark's "before" service.
    """
    response_format = body.get("response_format") or {}
    if response_format.get("type") != "json_schema":
        return None
    schema = response_format.get("json_schema", {}).get("schema", {})
    asked = ChatRequest(headers={}, body=body).user_text
    answer = {name: f"Summary of: {asked[:200]}" for name in schema.get("required", [])}
    return json.dumps(answer)


def _tool_step(body: dict[str, Any], chosen: ToolCall | Callable[[str], ToolCall] | None) -> dict[str, Any] | None:
    """The assistant message a model that uses tools gives, when the request offers tools.

    Offered tools and not yet called, it calls the `chosen` one when offered, else the first one with
    the haiku for each string argument; told a tool's result, it answers with it. As OpenAI's Chat
    Completions does, a call is an assistant message with `tool_calls` (arguments as a JSON string),
    and a result arrives as a `tool` message naming the call's id.
    """
    messages = body.get("messages") or []
    if not body.get("tools") or not messages:
        return None
    if messages[-1].get("role") == "tool":
        return {"role": "assistant", "content": f"The tool answered: {messages[-1].get('content')}"}
    call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function"}
    offered = [tool["function"]["name"] for tool in body["tools"]]
    if callable(chosen):
        chosen = chosen(ChatRequest(headers={}, body=body).user_text)
    if chosen and chosen[0] in offered:
        call["function"] = {"name": chosen[0], "arguments": json.dumps(chosen[1])}
    else:
        function = body["tools"][0]["function"]
        parameters = function.get("parameters", {}).get("properties", {})
        arguments = {name: HAIKU for name, schema in parameters.items() if schema.get("type") == "string"}
        call["function"] = {"name": function["name"], "arguments": json.dumps(arguments)}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *_: Any) -> None:  # keep test output readable
        pass

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        # A caller that timed out (the hanging-LLM story) has closed the socket: nobody to answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.end_headers()
            self.wfile.write(data)

    def do_POST(self) -> None:
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send_json(404, _error(f"no route {self.path}", "invalid_request_error"))
            return
        if time.monotonic() < self.server.state.down_until:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        length = int(self.headers.get("Content-Length", 0))
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError as exc:
            self._send_json(400, _error(f"body is not JSON: {exc}", "invalid_request_error"))
            return
        state = self.server.state
        with state.lock:
            state.requests.append(ChatRequest(headers=dict(self.headers.items()), body=body))
            fault = state.faults.pop(0) if state.faults else None
            state.in_flight += 1
            state.most_in_flight = max(state.most_in_flight, state.in_flight)
            state.changed.notify_all()
        try:
            self._answer(state, body, fault)
        finally:
            with state.lock:
                state.in_flight -= 1

    def _answer(self, state: FakeOpenAI, body: dict[str, Any], fault: Fault | None) -> None:
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            self._send_json(401, _error("missing API key", "invalid_request_error", code="invalid_api_key"))
            return
        if fault and fault.release:
            while not fault.release.wait(0.1) and not self.server.stopping.is_set():
                pass
        if fault and fault.status:
            self._send_json(fault.status, _error(f"injected {fault.status}", "server_error"))
            return
        with state.lock:
            gathering = state.gathering
            while gathering and not gathering.reached and not self.server.stopping.is_set():
                gathering.reached = state.in_flight >= gathering.calls or time.monotonic() > gathering.deadline
                state.changed.notify_all()
                state.changed.wait(0.1)
        time.sleep(state.latency_s)
        message = _tool_step(body, state.tool_call) or {
            "role": "assistant",
            "content": _structured_reply(body) or state.reply,
        }
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        completion_tokens = len((message["content"] or json.dumps(message.get("tool_calls"))).split())
        finish_reason = "tool_calls" if "tool_calls" in message else "stop"
        # As a real server does: an answer longer than max_tokens is cut there (a word is a token here).
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if finish_reason == "stop" and isinstance(max_tokens, int) and completion_tokens > max_tokens:
            message["content"] = " ".join(message["content"].split()[:max_tokens])
            completion_tokens, finish_reason = max_tokens, "length"
        self._send_json(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake-model"),
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )


def _error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    """An error body with the four fields OpenAI and llama.cpp's server send."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, state: FakeOpenAI) -> None:
        super().__init__((host, port), _Handler)
        self.state = state
        self.stopping = threading.Event()


class LLMServer:
    """Runs a FakeOpenAI on <host>:<port> in a background thread (loopback, but in a pod)."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.state = FakeOpenAI()
        self._server = _Server(host, port, self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    def start(self) -> LLMServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
