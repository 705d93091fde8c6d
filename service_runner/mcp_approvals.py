"""Human approval for the MCP tools a file of MCPServer resources names (mcp/servers.yaml).

Dapr's MCPServer resource has no field for it, so each server names its tools that wait for a human in
an annotation, `require-approval: tool, tool`: the rule sits beside the server it is about, in the file
`dapr run` loads. dapr-agents runs a `before_tool_call` hook on every tool call, MCP ones included, in
the workflow (so on every replay: this one reads nothing but the call's name).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import yaml
from dapr_agents import RequireApproval, ToolHookContext

ANNOTATION = "require-approval"


class ApprovalsNamedIn:
    """A `before_tool_call` hook: the tools the file's annotations name wait for a human."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.by_server: dict[str, set[str]] = {}
        for resource in yaml.safe_load_all(Path(path).read_text()):
            if resource and resource.get("kind") == "MCPServer":
                named = (resource["metadata"].get("annotations") or {}).get(ANNOTATION, "")
                self.by_server[resource["metadata"]["name"]] = {n.strip() for n in named.split(",") if n.strip()}
        self.tools = set().union(*self.by_server.values())

    def __call__(self, call: ToolHookContext) -> RequireApproval | None:
        if call.step_name not in self.tools:
            return None
        timeout = int(os.getenv("APPROVAL_TIMEOUT_SECONDS", "3600"))  # no answer by then: denied
        return RequireApproval(timeout_seconds=timeout, instructions=f"Run {call.step_name}? {call.payload}")

    def check(self, tools: Iterable[str]) -> None:
        """A name no server offers would leave the tool it meant without approval: refuse to start."""
        offered = set(tools)
        for server, named in self.by_server.items():
            if unknown := sorted(named - offered):
                raise SystemExit(
                    f"{self.path}: the {ANNOTATION} annotation of MCP server {server!r} names "
                    f"{', '.join(unknown)}, which no server offers (offered: {', '.join(sorted(offered))})"
                )
