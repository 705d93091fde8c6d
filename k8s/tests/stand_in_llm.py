"""The tests' stand-in LLM (tests/llm_server.py) in a pod of the cluster, with a control API.

The agent's sidecar reaches it at http://stand-in-llm:8080/v1 as it would reach OpenAI. The tests,
outside the cluster, use port 8081: GET /requests lists what the model was asked, POST /hold holds
the next request until POST /release, POST /latency?seconds=S slows every answer, POST
/gather?calls=N&within=S holds every call until N are held at once (or S seconds pass), POST
/tool-call with {"name": ..., "arguments": {...}} (or null) is the tool call asked for when tools are
offered (else the first tool offered), and GET /in-flight counts the calls being answered now and the
most at once since the gathering. Requests are listed with a digest of their Authorization header, so
that the API key never leaves this pod.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.llm_server import LLMServer

LLM_PORT = 8080
CONTROL_PORT = 8081


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class _Control(BaseHTTPRequestHandler):
    server: _ControlServer

    def log_message(self, *_: Any) -> None:
        pass

    def _reply(self, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        state = self.server.llm.state
        if self.path == "/in-flight":
            with state.lock:
                self._reply({"in_flight": state.in_flight, "most_in_flight": state.most_in_flight})
            return
        if self.path != "/requests":
            self.send_error(404)
            return
        requests = self.server.llm.state.chat_requests()
        self._reply(
            [{"asked": r.user_text, "key_sha256": _digest(r.headers.get("Authorization", ""))} for r in requests]
        )

    def do_POST(self) -> None:
        if self.path == "/hold":
            self.server.holds.append(self.server.llm.state.hold_next())
            self._reply({"held": len(self.server.holds)})
        elif self.path.startswith("/latency?seconds="):
            self.server.llm.state.latency_s = float(self.path.split("=", 1)[1])
            self._reply({"latency_s": self.server.llm.state.latency_s})
        elif self.path.startswith("/gather?"):
            asked = dict(pair.split("=", 1) for pair in self.path.split("?", 1)[1].split("&"))
            self.server.llm.state.reset_counts()
            self.server.llm.state.gather(int(asked["calls"]), float(asked["within"]))
            self._reply(asked)
        elif self.path == "/tool-call":
            chosen = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
            self.server.llm.state.tool_call = (chosen["name"], chosen["arguments"]) if chosen else None
            self._reply(chosen)
        elif self.path == "/release":
            for hold in self.server.holds:
                hold.set()
            self._reply({"released": len(self.server.holds)})
            self.server.holds.clear()
        else:
            self.send_error(404)


class _ControlServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, llm: LLMServer) -> None:
        super().__init__(("0.0.0.0", CONTROL_PORT), _Control)
        self.llm = llm
        self.holds: list[threading.Event] = []


if __name__ == "__main__":
    llm = LLMServer(port=LLM_PORT, host="0.0.0.0").start()
    print(f"stand-in LLM on :{LLM_PORT}, control on :{CONTROL_PORT}", flush=True)
    _ControlServer(llm).serve_forever()
