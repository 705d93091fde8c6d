from dapr_agents import DurableAgent

from service_runner import ServiceRunner

runner = ServiceRunner()
agent = DurableAgent(name="Assistant", system_prompt="You are a helpful assistant")
agent.memory = None  # no per-run summary: nothing reads it back, and it would cost a second LLM call
try:
    runner.serve(agent)
finally:
    runner.shutdown(agent)
