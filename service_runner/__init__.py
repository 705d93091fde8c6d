"""What the service needs beyond dapr-agents' AgentRunner, behind `ServiceRunner.serve`:

- task_checks: what a runnable task is, the one rule of every door;
- http_door: the checks in front of every HTTP route;
- topic_door: the check on the agent's topic, and its dead-letter topic;
- once_only: at most one run per Idempotency-Key, and per published message;
- schedules: tasks run on a schedule, kept as jobs in Dapr's scheduler, one run per tick;
- steady_reads: reads of a run's state that ride over the instant its next step is written;
- thread_pools: the pools a run in flight holds a thread of, sized so the sidecar's bound is the only one;
- dapr_client: one Dapr client for the process, handed to dapr-agents;
- grpc_spans: spans of the agent's calls to its sidecar, made only when the agent traces;
- subscription_fix: a fix of the Dapr Python SDK's subscription start;
- llm_refusals: a request the LLM refuses (a prompt over its context, say) ends the run at once;
- tracing_warnings: two warnings of dapr-agents' tracing about conditions it handles, dropped;
- tool_calls: the idempotency key of the tool call a tool is running for;
- mcp_approvals: human approval for the MCP tools named in the file of MCP servers;
- mcp_after_listen: MCP tools connected once the app listens, before any run;
- mcp_failures: an MCP call the server never answered ends the run.
"""

from service_runner.mcp_approvals import ApprovalsNamedIn
from service_runner.runner import ServiceRunner
from service_runner.tool_calls import tool_call_key

__all__ = ["ApprovalsNamedIn", "ServiceRunner", "tool_call_key"]
