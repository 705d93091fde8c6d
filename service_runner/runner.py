"""ServiceRunner: dapr-agents' AgentRunner, serving the agent with a check at every door."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import uvicorn
from dapr_agents import DurableAgent
from dapr_agents.types.workflow import PubSubRouteSpec
from dapr_agents.workflow.runners import AgentRunner
from fastapi import FastAPI

import service_runner.subscription_fix  # noqa: F401  (applied on import)
from service_runner.http_door import TaskGuard
from service_runner.topic_door import DEAD_LETTER, runnable


class ServiceRunner(AgentRunner):
    """Serves POST /run and the agent's topic; each turns away what is not a runnable task.

    The app listens on 127.0.0.1 only: callers elsewhere go through the sidecar (README, "In
    production"). Its port comes from APP_PORT, which `dapr run -p` sets, so replicas share a script.
    """

    def serve(self, agent: DurableAgent, **options: Any) -> FastAPI:  # type: ignore[override]
        app = super().serve(agent, app=FastAPI(title=agent.name), entry_path="/run", **options)
        uvicorn.run(TaskGuard(app, path="/run"), host="127.0.0.1", port=int(os.getenv("APP_PORT", "8001")))
        return app

    def _build_pubsub_specs(self, agent: DurableAgent, config: Any) -> list[PubSubRouteSpec]:
        """Dapr takes a streaming subscription's dead-letter topic from the app only, and dapr-agents
        1.0.9 (pinned) sets none, so this overrides the private hook that builds the subscription."""
        return [
            replace(spec, dead_letter_topic=DEAD_LETTER, payload_filter=runnable)
            if spec.topic == config.agent_topic
            else spec
            for spec in super()._build_pubsub_specs(agent, config)
        ]
