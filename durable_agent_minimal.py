from dapr_agents import DurableAgent
from dapr_agents.workflow.runners import AgentRunner

runner = AgentRunner()
agent = DurableAgent(name="Assistant")  # prints the conversation as it goes
agent.memory = None  # no per-run summary: nothing reads it back, and it would cost a second LLM call
try:
    output = runner.run_sync(agent, {"task": "Write a haiku about programming."})
finally:
    runner.shutdown(agent)
if output is None:  # run_sync's sign that the workflow failed or timed out
    raise SystemExit("The agent's workflow did not complete; its error is logged above.")
