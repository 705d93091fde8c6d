from dapr_agents import DurableAgent
from dapr_agents.workflow.runners import AgentRunner

runner = AgentRunner()
agent = DurableAgent(name="Assistant", system_prompt="You are a helpful assistant")
try:
    # Loopback only: reach it from elsewhere through the sidecar (see README, "In production").
    runner.serve(agent, host="127.0.0.1", port=8001, entry_path="/run")
finally:
    runner.shutdown(agent)
