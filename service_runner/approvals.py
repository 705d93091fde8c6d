"""The approval routes: the tool calls waiting for a human, and one decision on each.

dapr-agents 1.0.9 keeps the waiting approvals in process memory, saved to the state store on each
change and read back on start, so they outlive a restart. It drops an approval from that list when
a decision comes, not when its timeout denies the call, and its own routes answer a second decision
with 404, and one after the timeout with 200 while the run goes on (the workflow no longer waits for
it). These routes answer 409 to both, and list only the approvals a decision can still change.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from datetime import UTC, datetime, timedelta
from typing import Any

from dapr.clients import DaprClient
from dapr.clients.grpc._state import Concurrency, StateOptions
from dapr.ext.workflow import DaprWorkflowClient, WorkflowStatus
from dapr_agents import DurableAgent
from fastapi import HTTPException, Request

ENDED = (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.TERMINATED)
# How long a decision is remembered, so that a second one answers 409 rather than 404: as long as
# Dapr keeps a failed run (config/dapr-config.yaml).
DECISION_TTL_SECONDS = 7 * 24 * 3600


class Approvals:
    def __init__(self, agent: DurableAgent, workflows: DaprWorkflowClient, dapr: DaprClient) -> None:
        self.agent = agent
        self.workflows = workflows
        self.dapr = dapr
        self._deciding: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def waiting(self) -> list[dict[str, Any]]:
        """List the approvals that are waiting for a decision."""
        now = datetime.now(UTC)
        listed = []
        for approval in self.agent.list_pending_approvals():
            if _expires_at(approval) > now and await self._run_going(approval["instance_id"]):
                listed.append(approval)
        return listed

    async def decide(self, approval_request_id: str, request: Request) -> dict[str, Any]:
        """Approve or deny a tool call waiting for a human, once."""
        decision = await request.json()  # checked by HttpDoor
        # Two decisions at once on this replica: the second waits, then finds the first. Between
        # replicas the store's first-write check settles it, slowly: resiliency.yaml's retries of
        # agent-workflow take about 17 s to give the conflict up.
        async with self._deciding.setdefault(approval_request_id, asyncio.Lock()):
            return await self._decide(approval_request_id, decision)

    async def _decide(self, approval_request_id: str, decision: dict[str, Any]) -> dict[str, Any]:
        earlier = await asyncio.to_thread(self._decision_made, approval_request_id)
        if earlier is not None:
            raise HTTPException(409, f"this approval was decided already: {_verdict(earlier)}")
        approval = self.agent._pending_approvals.get(approval_request_id)
        if approval is None:
            raise HTTPException(404, "no approval is waiting with that id (GET /hitl/approvals lists them)")
        if (expires_at := _expires_at(approval)) <= datetime.now(UTC):
            raise HTTPException(409, f"this approval timed out at {expires_at.isoformat()}: the tool call was denied")
        if not await self._run_going(approval["instance_id"]):
            raise HTTPException(409, "the run that asked for this approval has ended")
        if not await asyncio.to_thread(self._record, approval_request_id, decision):
            earlier = await asyncio.to_thread(self._decision_made, approval_request_id)
            raise HTTPException(409, f"this approval was decided already: {_verdict(earlier or {})}")
        try:
            await asyncio.to_thread(
                self.agent.raise_approval_event,
                instance_id=approval["instance_id"],
                approval_request_id=approval_request_id,
                approved=decision["approved"],
                reason=decision.get("reason"),
            )
        except Exception:
            await asyncio.to_thread(self._forget, approval_request_id)  # not delivered: it may be sent again
            raise
        return {"approval_request_id": approval_request_id, "approved": decision["approved"], "status": "ok"}

    async def _run_going(self, instance_id: str) -> bool:
        state = await asyncio.to_thread(self.workflows.get_workflow_state, instance_id, fetch_payloads=False)
        return state is not None and state.runtime_status not in ENDED

    def _key(self, approval_request_id: str) -> str:
        return f"{self.agent.name.lower()}:approval_decision:{approval_request_id}"

    def _decision_made(self, approval_request_id: str) -> dict[str, Any] | None:
        stored = self.dapr.get_state(self.agent.state_store.store_name, self._key(approval_request_id)).data
        return json.loads(stored) if stored else None

    def _record(self, approval_request_id: str, decision: dict[str, Any]) -> bool:
        """Store the decision unless one is stored: False if another request got there first."""
        try:
            self.dapr.save_state(
                self.agent.state_store.store_name,
                self._key(approval_request_id),
                json.dumps(decision),
                options=StateOptions(concurrency=Concurrency.first_write),
                state_metadata={"ttlInSeconds": str(DECISION_TTL_SECONDS)},
            )
        except Exception:
            if self._decision_made(approval_request_id) is None:
                raise
            return False
        return True

    def _forget(self, approval_request_id: str) -> None:
        self.dapr.delete_state(self.agent.state_store.store_name, self._key(approval_request_id))


def _expires_at(approval: dict[str, Any]) -> datetime:
    """When the workflow denies the call by itself: its timer starts a moment after requested_at."""
    if approval.get("timeout_seconds") is None:
        return datetime.max.replace(tzinfo=UTC)
    requested_at = datetime.fromisoformat(approval["requested_at"])
    return requested_at + timedelta(seconds=approval["timeout_seconds"])


def _verdict(decision: dict[str, Any]) -> str:
    return "approved" if decision.get("approved") else "denied"
