"""An MCP call the server never answered ends the run: a fix of dapr-agents 1.0.9 on daprd 1.18.2, applied on import.

daprd gives each MCP tool call 30 s (an HTTP server's `timeout`), and one reconnect when its MCP
client reports the server's connection closed, which starts a stdio server again. A server that dies
with the call in flight is reported so only at times: more often the client reports the end of its
stream ("EOF") instead, and daprd does not call again. Either way daprd returns the failure as the
tool's result, flagged as an error, and dapr-agents hands it to the model as if the tool had answered:
an LLM call spent on an outage the model cannot mend, and a run marked COMPLETED. Here such a result
fails the run, with daprd's reason, which names the server and the tool. Errors the server itself
answers with (bad arguments, say) still go to the model. The run's workflow reads the result from its
history, so this decides the same way on every replay. tests/test_mcp.py's hanging-server story fails
when dapr-agents stops passing results through `serialize_tool_result`.
"""

from __future__ import annotations

from typing import Any

from dapr_agents.agents import durable

# daprd's words for a call that got no answer (pkg/runtime/wfengine/inprocess/mcp/v1/activities.go).
UNANSWERED = (
    *("context deadline exceeded", "after reconnect", "reconnect failed", "call-tool: session for"),
    '"tools/call": EOF',  # the server's connection ended with the call in flight
)

_serialize = durable.serialize_tool_result


class MCPServerUnansweredError(Exception):
    """The run's end: the sidecar could not get an answer from an MCP server."""


def _serialize_or_fail(result: Any) -> str:
    serialized = _serialize(result)
    if serialized.startswith("Error: call-tool: ") and any(words in serialized for words in UNANSWERED):
        reason = serialized.removeprefix("Error: ")
        raise MCPServerUnansweredError(f"The MCP server did not answer: {reason}")
    return serialized


durable.serialize_tool_result = _serialize_or_fail
