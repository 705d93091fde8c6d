"""One Dapr client for the whole process, handed to dapr-agents through its `client_factory` seam.

dapr-agents 1.0.9 builds a new DaprClient for every state read or write and every LLM call, and a
new client first probes the sidecar's health over HTTP, then opens a gRPC channel of its own: that
was 43% of the agent's CPU at 0 ms LLM. A gRPC channel is safe to share between threads, so the
agent's stores, its LLM client, the runner and the approval routes all use this one.
"""

from __future__ import annotations

import threading

from dapr.clients import DaprClient
from dapr_agents import DurableAgent


class _KeptOpen(DaprClient):
    """A client that `with factory() as client:` blocks leave open: dapr-agents closes each one
    it builds after one use, and this one is used again."""

    def close(self) -> None:
        pass

    def close_channel(self) -> None:
        super().close()


class SharedDaprClient:
    """A `client_factory` that builds one client, on first use, and returns it ever after."""

    def __init__(self) -> None:
        self._client: _KeptOpen | None = None
        self._lock = threading.Lock()

    def __call__(self) -> DaprClient:
        with self._lock:
            if self._client is None:
                self._client = _KeptOpen()
            return self._client

    def hand_to(self, agent: DurableAgent) -> None:
        """Make the agent's state stores and LLM client use this client, not one per call."""
        stores = (agent.state_store, agent.registry_state, agent.memory)
        for component in (*stores, *(getattr(s, "_store_cached", None) for s in stores), agent.llm):
            if component is not None and hasattr(component, "client_factory"):
                component.client_factory = self
        if hasattr(agent.llm, "get_client"):
            # Its LLM client also wraps the client in a new DaprInferenceClient on every call, and
            # with it a new cache of the sidecar's metadata: one GetMetadata per LLM call. Kept, the
            # wrapper asks once a minute (its cache's TTL).
            inference = agent.llm.get_client()
            object.__setattr__(agent.llm, "get_client", lambda: inference)  # past pydantic's field check

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close_channel()
                self._client = None
