"""The approval routes, the same on every replica: the tool calls waiting for a human, one decision each.

dapr-agents 1.0.9 keeps the waiting approvals in its process's memory, saved as one value that each
replica overwrites with its own, and its routes read that memory: each replica would list only the
approvals it requested, and answer 404 for the others. Here the state store `agent-approvals` holds
them, and the routes read nothing else:

- `<agent>:approval:<id>`: the approval, as the run asked for it, written when the run asks;
- `<agent>:approvals_waiting`: the ids of those not yet decided or timed out, changed only with its
  etag, so replicas that change it at once never lose each other's changes;
- `<agent>:approval_decision:<id>`: the decision, written only if none is there (first write), so
  of two decisions on any replicas one is taken and the other answers 409.

Dapr sends the decision to whichever replica hosts the run. A route answers 409 to a decision on an
approval that timed out or whose run has ended, and lists only approvals a decision can still change.
Each key ends with the store's TTL (resources/agent-approvals.yaml), a week after its last write: a
second decision within a week answers 409, and an approval may wait up to a week.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from dapr.clients import DaprClient
from dapr.clients.grpc._state import Concurrency, StateOptions
from dapr.ext.workflow import DaprWorkflowClient, WorkflowStatus
from dapr_agents import DurableAgent
from fastapi import HTTPException, Request

STORE = "agent-approvals"
ENDED = (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.TERMINATED)
# Replicas changing the index at once: each tries again with the index as the others left it.
INDEX_TRIES = 50


class Approvals:
    def __init__(self, agent: DurableAgent, workflows: DaprWorkflowClient, dapr: DaprClient) -> None:
        self.agent = agent
        self.workflows = workflows
        self.dapr = dapr
        self._prefix = agent.name.lower()
        self._deciding: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def record_requests(self) -> None:
        """Store each approval as the run asks for it; before the agent starts (it registers its
        activities on start, taking publish_approval_request from the instance)."""
        publish = self.agent.publish_approval_request

        @functools.wraps(publish)
        def store_then_publish(ctx: Any, payload: dict[str, Any]) -> None:
            self._store(payload["event"])  # again on a retry of the activity: same key, same value
            return publish(ctx, payload)

        self.agent.publish_approval_request = store_then_publish  # type: ignore[method-assign]

    async def waiting(self) -> list[dict[str, Any]]:
        """List the approvals that are waiting for a decision."""
        ids = (await asyncio.to_thread(self._index))[0]
        approvals = await asyncio.to_thread(self._load_many, ids)
        now = datetime.now(UTC)
        listed = [
            approval
            for approval in approvals
            if _expires_at(approval) > now and await self._run_going(approval["instance_id"])
        ]
        done = set(ids) - {approval["approval_request_id"] for approval in listed}
        if done:  # timed out, ended, or expired from the store: no decision can change them now
            await asyncio.to_thread(self._change_index, lambda waiting: [i for i in waiting if i not in done])
        return sorted(listed, key=lambda approval: approval["requested_at"])

    async def decide(self, approval_request_id: str, request: Request) -> dict[str, Any]:
        """Approve or deny a tool call waiting for a human, once."""
        decision = await request.json()  # checked by HttpDoor
        # Two decisions at once on this replica: the second waits, then finds the first. Between
        # replicas the first write of the decision settles it.
        async with self._deciding.setdefault(approval_request_id, asyncio.Lock()):
            return await self._decide(approval_request_id, decision)

    async def _decide(self, approval_request_id: str, decision: dict[str, Any]) -> dict[str, Any]:
        earlier = await asyncio.to_thread(self._decision_made, approval_request_id)
        if earlier is not None:
            raise HTTPException(409, f"this approval was decided already: {_verdict(earlier)}")
        approval = await asyncio.to_thread(self._load, approval_request_id)
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
        await asyncio.to_thread(self._change_index, lambda waiting: [i for i in waiting if i != approval_request_id])
        return {"approval_request_id": approval_request_id, "approved": decision["approved"], "status": "ok"}

    async def _run_going(self, instance_id: str) -> bool:
        state = await asyncio.to_thread(self.workflows.get_workflow_state, instance_id, fetch_payloads=False)
        return state is not None and state.runtime_status not in ENDED

    def _store(self, approval: dict[str, Any]) -> None:
        key = f"{self._prefix}:approval:{approval['approval_request_id']}"
        self.dapr.save_state(STORE, key, json.dumps(approval))
        # Those timed out leave the index here too, so that it stays bounded if no one lists it.
        self._change_index(lambda waiting: [*self._not_timed_out(waiting), approval["approval_request_id"]])

    def _not_timed_out(self, ids: list[str]) -> list[str]:
        now = datetime.now(UTC)
        return [approval["approval_request_id"] for approval in self._load_many(ids) if _expires_at(approval) > now]

    def _load(self, approval_request_id: str) -> dict[str, Any] | None:
        stored = self.dapr.get_state(STORE, f"{self._prefix}:approval:{approval_request_id}").data
        return json.loads(stored) if stored else None

    def _load_many(self, ids: list[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        items = self.dapr.get_bulk_state(STORE, [f"{self._prefix}:approval:{i}" for i in ids]).items
        return [json.loads(item.data) for item in items if item.data]

    def _index(self) -> tuple[list[str], str]:
        stored = self.dapr.get_state(STORE, f"{self._prefix}:approvals_waiting")
        return (json.loads(stored.data) if stored.data else []), stored.etag

    def _change_index(self, change: Callable[[list[str]], list[str]]) -> None:
        """Write `change(index)` over the index, if no one changed the index since it was read."""
        for _ in range(INDEX_TRIES):
            ids, etag = self._index()
            changed = list(dict.fromkeys(change(ids)))
            if changed == ids:
                return
            try:
                self.dapr.save_state(
                    STORE,
                    f"{self._prefix}:approvals_waiting",
                    json.dumps(changed),
                    etag=etag or None,  # none yet: written only if still none
                    options=StateOptions(concurrency=Concurrency.first_write),
                )
                return
            except grpc.RpcError as error:
                # A stale etag answers ABORTED; a first index that another replica wrote first, INTERNAL.
                if error.code() != grpc.StatusCode.ABORTED and (etag or not self._index()[1]):
                    raise
            time.sleep(random.uniform(0.005, 0.05))
        raise RuntimeError(f"the approval index changed under {INDEX_TRIES} tries in a row")

    def _decision_made(self, approval_request_id: str) -> dict[str, Any] | None:
        stored = self.dapr.get_state(STORE, f"{self._prefix}:approval_decision:{approval_request_id}").data
        return json.loads(stored) if stored else None

    def _record(self, approval_request_id: str, decision: dict[str, Any]) -> bool:
        """Store the decision unless one is stored: False if another request got there first."""
        try:
            self.dapr.save_state(
                STORE,
                f"{self._prefix}:approval_decision:{approval_request_id}",
                json.dumps(decision),
                options=StateOptions(concurrency=Concurrency.first_write),
            )
        except grpc.RpcError:
            if self._decision_made(approval_request_id) is None:
                raise
            return False
        return True

    def _forget(self, approval_request_id: str) -> None:
        self.dapr.delete_state(STORE, f"{self._prefix}:approval_decision:{approval_request_id}")


def _expires_at(approval: dict[str, Any]) -> datetime:
    """When the workflow denies the call by itself: its timer starts a moment after requested_at."""
    if approval.get("timeout_seconds") is None:
        return datetime.max.replace(tzinfo=UTC)
    requested_at = datetime.fromisoformat(approval["requested_at"])
    return requested_at + timedelta(seconds=approval["timeout_seconds"])


def _verdict(decision: dict[str, Any]) -> str:
    return "approved" if decision.get("approved") else "denied"
