from dapr_agents import DurableAgent, Hooks

from service_runner import ApprovalsNamedIn, ServiceRunner

# Its tools come from the MCP servers in mcp/servers.yaml, which `dapr run --resources-path ./mcp` loads.
runner = ServiceRunner()
agent = DurableAgent(
    name="Scribe",
    system_prompt="You are a helpful assistant",
    hooks=Hooks(before_tool_call=[ApprovalsNamedIn("mcp/servers.yaml")]),
)
agent.memory = None  # no per-run summary: nothing reads it back, and it would cost another LLM call
try:
    runner.serve(agent)
finally:
    runner.shutdown(agent)
