"""A request the LLM refuses ends the run at once, with the LLM's reason.

A refusal is a 4xx other than 408, 409 and 429: a prompt longer than the model's context window, a
wrong key, an unknown model. It is the same on every try. dapr-agents 1.0.9 (pinned) still retries
a failed call_llm step 3 times (its default WorkflowRetryPolicy), each try after Dapr's resiliency
has retried the call 8 times (resources/resiliency.yaml): against llama.cpp's server, a task over
the context window cost 27 calls and 82 s before the run failed. Raised as the workflow SDK's
NonRetryableError, the refusal ends the run after the sidecar's 9 calls; any other failure (a 5xx,
a 429, a timeout) is retried as before.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import grpc
from dapr.ext.workflow._durabletask.task import NonRetryableError
from dapr_agents import DurableAgent

# How Dapr's conversation.openai component reports the server's answer (components-contrib 1.18).
REFUSAL = re.compile(r"API returned unexpected status code: (4\d\d)")
RETRIED = {"408", "409", "429"}


def end_runs_the_llm_refuses(agent: DurableAgent) -> None:
    """Before the agent starts: it registers its activities on start, taking call_llm from the instance."""
    call_llm = agent.call_llm

    @functools.wraps(call_llm)
    def call_llm_failing_on_refusal(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            return call_llm(ctx, payload)
        except Exception as error:  # dapr-agents raises its AgentError, from the sidecar's gRPC error
            reason = _sidecars_reason(error)
            refusal = REFUSAL.search(reason)
            if refusal and refusal[1] not in RETRIED:
                raise NonRetryableError(f"The LLM refused the request: {reason}") from error
            raise

    agent.call_llm = call_llm_failing_on_refusal  # type: ignore[method-assign]


def _sidecars_reason(error: BaseException) -> str:
    """The details of the sidecar's gRPC error behind `error`, or `error` as text."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, grpc.RpcError) and callable(getattr(cause, "details", None)):
            return str(cause.details())
        cause = cause.__cause__ or cause.__context__
    return str(error)
