import os

import uvicorn
from dapr_agents import DurableAgent
from fastapi import FastAPI

from task_guard import GuardedAgentRunner, TaskGuard

runner = GuardedAgentRunner()
agent = DurableAgent(name="Assistant", system_prompt="You are a helpful assistant")
app = runner.serve(agent, app=FastAPI(title="Assistant"), entry_path="/run")
try:
    # Loopback only: reach it from elsewhere through the sidecar (see README, "In production").
    uvicorn.run(TaskGuard(app, path="/run"), host="127.0.0.1", port=int(os.getenv("APP_PORT", "8001")))
finally:
    runner.shutdown(agent)
