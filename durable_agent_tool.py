import os

from dapr_agents import DurableAgent, Hooks, RequireApproval, ToolHookContext, tool

from service_runner import ServiceRunner, tool_call_key


@tool
def publish_haiku(haiku: str) -> str:
    """Publish a haiku: append it to outbox.txt."""
    key = tool_call_key()  # the same on every try of this call: an idempotency key for any effect
    with open("outbox.txt", "a") as outbox:
        outbox.write(f"{key} {haiku!r}\n")
    return f"Published as {key}."


def ask_a_human(call: ToolHookContext) -> RequireApproval:
    timeout = int(os.getenv("APPROVAL_TIMEOUT_SECONDS", "3600"))  # no answer by then: denied
    return RequireApproval(timeout_seconds=timeout, instructions=f"Publish this haiku? {call.payload}")


runner = ServiceRunner()
agent = DurableAgent(
    name="Publisher",
    system_prompt="You are a helpful assistant",
    tools=[publish_haiku],
    hooks=Hooks(before_tool_call=[ask_a_human]),
)
agent.memory = None  # no per-run summary: nothing reads it back, and it would cost another LLM call
try:
    runner.serve(agent)
finally:
    runner.shutdown(agent)
