"""Spans of the agent's calls to its sidecar, made only when the agent traces.

Importing the Dapr workflow SDK wraps every gRPC channel the process opens from then on in
OpenTelemetry's client interceptor (dapr/ext/workflow/_durabletask/client.py), traced or not. Without
tracing, each call to the sidecar still builds a span that goes nowhere: a fifth of the agent's
Python time at 0 ms LLM in a py-spy profile. dapr-agents wraps the channels again itself when its tracing is
on (the OTEL_ variables of docs/observability.md), so that a run's calls join its trace.
"""

from __future__ import annotations

from dapr_agents import DurableAgent
from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient


def only_when_traced(agent: DurableAgent) -> None:
    """Before the channels the agent's runs use are opened: the shared client's, the worker's."""
    if agent.instrumentor is None:  # set when dapr-agents turned its tracing on
        GrpcInstrumentorClient().uninstrument()
