"""Which tool call a tool is running for: the key a tool with an external effect needs.

Each tool call runs as a workflow activity, and Dapr runs an activity again when the app or its
sidecar crashed before the result was recorded. The run's instance id and the model's tool call id
are the same on every try of one call, and differ between calls, so together they name the effect:
an idempotency key to hand to whatever the tool changes.
"""

from __future__ import annotations

import functools
from contextvars import ContextVar
from typing import Any

from dapr_agents import DurableAgent

_current: ContextVar[str] = ContextVar("tool_call_key")


def tool_call_key() -> str:
    """`<instance id>:<tool call id>` of the tool call running now; only valid inside a tool."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("tool_call_key() is only known inside a tool the agent is running") from None


def name_tool_calls(agent: DurableAgent) -> None:
    """Make tool_call_key() answer inside the agent's tools; before the agent starts (it registers
    its activities on start, taking run_tool from the instance)."""
    run_tool = agent.run_tool

    @functools.wraps(run_tool)
    def run_tool_named(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
        # dapr-agents runs the tool in a new event loop on this thread, which copies this context.
        token = _current.set(f"{payload['instance_id']}:{payload['tool_call']['id']}")
        try:
            return run_tool(ctx, payload)
        finally:
            _current.reset(token)

    agent.run_tool = run_tool_named  # type: ignore[method-assign]
