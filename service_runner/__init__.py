"""What the service needs beyond dapr-agents' AgentRunner, behind `ServiceRunner.serve`:

- task_checks: what a runnable task is, the one rule of every door;
- http_door: the check in front of the HTTP routes;
- topic_door: the check on the agent's topic, and its dead-letter topic;
- subscription_fix: a fix of the Dapr Python SDK's subscription start.
"""

from service_runner.runner import ServiceRunner

__all__ = ["ServiceRunner"]
