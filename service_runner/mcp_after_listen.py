"""MCP tools connected once the app listens: a fix of dapr-agents 1.0.9's AgentRunner.serve on daprd 1.18.

AgentRunner.serve connects the agent to the sidecar's MCPServer resources (it runs each server's
ListTools workflow and waits for it) before its app listens. A sidecar started with an app port
(`dapr run -p 8001`) runs no workflow until the app listens: the service never starts. Here the runner
connects right after the app listens, and holds each POST (a task, a published message, a decision)
until the tools are there, so no run starts without them. The workflow worker starts only then too: a
run replayed without its MCP tools would schedule an activity where its history holds the tool's child
workflow, and fail as non-deterministic. tests/test_mcp.py checks that dapr-agents alone still never
serves; when that story fails, this module can go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from dapr.ext.workflow import WorkflowRuntime
from dapr_agents import DurableAgent
from starlette.types import ASGIApp, Receive, Scope, Send


def servers_to_connect(agent: DurableAgent) -> list[str]:
    """The sidecar's MCP servers, left unconnected until `connect` (dapr-agents skips a connected agent)."""
    names = list(getattr(agent, "_discovered_mcpserver_names", []))
    if names and not agent._mcp_tools_connected:
        agent._mcp_tools_connected = True  # so AgentRunner.serve does not connect before the app listens
    return names


def hold_start(runtime: WorkflowRuntime) -> Callable[[], None]:
    """Makes `runtime.start()` wait for the function returned, which starts it."""
    start = runtime.start
    runtime.start = lambda: None  # type: ignore[method-assign]

    def release() -> None:
        runtime.start = start  # type: ignore[method-assign]
        start()

    return release


async def connect(agent: DurableAgent) -> None:
    agent._mcp_tools_connected = False
    await agent.connect_mcpservers()


class ToolsFirst:
    """Holds each POST until `connected` is set: a run started before would offer the model no tools."""

    def __init__(self, app: ASGIApp, connected: asyncio.Event) -> None:
        self.app, self.connected = app, connected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            await self.connected.wait()
        await self.app(scope, receive, send)
