"""ServiceRunner: dapr-agents' AgentRunner, serving the agent with a check at every door."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Any

import grpc
import uvicorn
from dapr.ext.workflow import WorkflowStatus
from dapr_agents import DurableAgent
from dapr_agents.types.workflow import PubSubRouteSpec
from dapr_agents.workflow.runners import AgentRunner
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from service_runner import mcp_failures, subscription_fix, tracing_warnings  # noqa: F401  (each applied on import)
from service_runner.approvals import Approvals
from service_runner.dapr_client import SharedDaprClient
from service_runner.grpc_spans import only_when_traced
from service_runner.http_door import APPROVAL_PATH, JOB_PATH, HttpDoor
from service_runner.llm_refusals import end_runs_the_llm_refuses
from service_runner.mcp_after_listen import ToolsFirst, connect, hold_start, servers_to_connect
from service_runner.mcp_approvals import ApprovalsNamedIn
from service_runner.once_only import OncePerMessageClient, run_id
from service_runner.schedules import ScheduleFileError, Schedules
from service_runner.stream_keys import StreamKeys
from service_runner.thread_pools import event_loop_executor, workflow_runtime
from service_runner.tool_calls import name_tool_calls
from service_runner.topic_door import dead_letter, runnable

STATUS_PATH = "/agent/instances/{instance_id}"
STREAM_PUBSUB = "agent-stream"
ENDED = (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.TERMINATED)
log = logging.getLogger("service_runner")


class ServiceRunner(AgentRunner):
    """Serves POST /run and the agent's topic; each turns away what is not a runnable task.

    The app listens on 127.0.0.1 only: callers elsewhere go through the sidecar (docs/production.md,
    "Who can call what"). Its port comes from APP_PORT, which `dapr run -p` sets, so replicas share a script.
    """

    def __init__(self, **options: Any) -> None:
        self._workflows = OncePerMessageClient()
        self._dapr = SharedDaprClient()
        self._stream_keys = StreamKeys(self._workflows, self._dapr)
        super().__init__(wf_client=self._workflows, client_factory=self._dapr, **options)
        self._runtime = workflow_runtime()
        self._starting: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._entries: dict[str, Callable[..., Any]] = {}

    def serve(self, agent: DurableAgent, **options: Any) -> FastAPI:  # type: ignore[override]
        # Streamed runs go over a pub/sub component of their own (resources/agent-stream.yaml).
        agent.execution.stream_listener = {"type": "pubsub", "pubsub_name": STREAM_PUBSUB}
        name_tool_calls(agent)
        end_runs_the_llm_refuses(agent)
        only_when_traced(agent)
        self._dapr.hand_to(agent)
        mcp_servers = servers_to_connect(agent)  # connected once the app listens (mcp_after_listen.py)
        start_worker = hold_start(self._runtime) if mcp_servers else None
        approvals = Approvals(agent, self._workflows, self._dapr()) if agent.tools or mcp_servers else None
        if approvals:
            approvals.record_requests()
        agent.start(runtime=self._runtime)  # before the base starts it with the SDK's 6-thread worker
        app = super().serve(agent, app=FastAPI(title=agent.name), entry_path="/run", **options)
        if "ask_user" not in agent.execution.builtin_tools:  # answers to the agent's questions: none asked
            _remove_routes(app, lambda path: path == "/run/input")
            _replace_route(app, STATUS_PATH, self._status(), method="GET")
        if approvals:
            _replace_route(app, "/hitl/approvals", approvals.waiting, method="GET")
            _replace_route(app, APPROVAL_PATH, approvals.decide)
        else:  # approvals of tool calls: none to give
            _remove_routes(app, lambda path: path.startswith("/hitl/"))
        _replace_route(app, "/run", self._start_run(agent))
        self._serve_schedules(agent, app)
        _replace_route(app, f"{STATUS_PATH}/terminate", self._terminate())
        _replace_route(app, f"{STATUS_PATH}/purge", self._purge(agent))
        app.add_api_route("/healthz", _serving, methods=["GET"], summary="Answers while the app serves")
        app.add_exception_handler(grpc.RpcError, _sidecar_failed)
        connected = asyncio.Event()
        door = ToolsFirst(HttpDoor(app), connected) if mcp_servers else HttpDoor(app)
        server = uvicorn.Server(uvicorn.Config(door, host="127.0.0.1", port=int(os.getenv("APP_PORT", "8001"))))
        asyncio.run(_serve(server, partial(_connect_tools, agent, start_worker, connected) if start_worker else None))
        return app

    async def run_stream(self, agent: DurableAgent, payload: Any = None, **options: Any) -> AsyncIterator[Any]:
        """Dapr's Conversation API answers whole, not in deltas: the stream carries the answer. The
        run's stream in Redis goes once no chunk can come (stream_keys.py)."""
        instance_id = options.pop("instance_id", None) or uuid.uuid4().hex
        options = {**options, "instance_id": instance_id, "include_complete_message": True}
        topic = agent._infra.stream_topic_name(instance_id)
        async for chunk in self._stream_keys.deleted_after(
            super().run_stream(agent, payload, **options), instance_id, topic
        ):
            yield chunk

    def shutdown(self, agent: DurableAgent | None = None) -> None:
        super().shutdown(agent)
        self._runtime.shutdown()  # the agent stops only a runtime it made itself
        self._workflows.close()  # the base closes only a client it made itself
        self._dapr.close()

    def discover_entry(self, agent: DurableAgent) -> Callable[..., Any]:
        """The agent's workflow, found once: dapr-agents looks for it again on every run, reading each of
        the agent's properties, one of which reads the agent registry from the state store."""
        if agent.name not in self._entries:
            self._entries[agent.name] = super().discover_entry(agent)
        return self._entries[agent.name]

    def _build_pubsub_specs(self, agent: DurableAgent, config: Any) -> list[PubSubRouteSpec]:
        """Dapr takes a streaming subscription's dead-letter topic from the app only, and dapr-agents
        1.0.9 (pinned) sets none, so this overrides the private hook that builds the subscription."""
        return [
            replace(spec, dead_letter_topic=dead_letter(spec.topic), payload_filter=runnable)
            if spec.topic == config.agent_topic
            else spec
            for spec in super()._build_pubsub_specs(agent, config)
        ]

    def _serve_schedules(self, agent: DurableAgent, app: FastAPI) -> None:
        """Keep the AGENT_SCHEDULES file's schedules in Dapr's scheduler, and serve their ticks."""
        try:
            schedules = Schedules.from_env(self._dapr)
        except ScheduleFileError as error:
            raise SystemExit(f"AGENT_SCHEDULES: {error}") from None
        schedules.keep_in_scheduler()

        async def start(task: str, instance_id: str) -> tuple[str, bool]:
            return await self._start_once(agent, {"task": task}, instance_id)

        async def read(instance_id: str) -> Any:
            return await asyncio.to_thread(self._workflows.get_workflow_state, instance_id, fetch_payloads=False)

        app.add_api_route(JOB_PATH, schedules.tick_route(start), methods=["POST"], summary="A tick of a schedule")
        app.add_api_route("/schedules", schedules.list_route(read), methods=["GET"], summary="Schedules and their runs")

    def _start_run(self, agent: DurableAgent) -> Callable[..., Any]:
        async def start_run(request: Request) -> JSONResponse:
            """Start a run of the task; with an Idempotency-Key, at most one run per key."""
            task = await request.json()  # checked by HttpDoor
            key = request.headers.get("idempotency-key")
            # log=False: else dapr-agents holds a thread per run until it ends, to log how it ended.
            if key is None:
                instance_id, replayed = await self.run(agent, task, wait=False, log=False), False
            else:
                instance_id, replayed = await self._start_once(agent, task, run_id("run", key))
            started = {"instance_id": instance_id, "status_url": STATUS_PATH.format(instance_id=instance_id)}
            return JSONResponse(started, headers={"Idempotent-Replayed": "true"} if replayed else None)

        return start_run

    async def _start_once(self, agent: DurableAgent, task: dict[str, str], instance_id: str) -> tuple[str, bool]:
        """Start the run `instance_id` unless Dapr has it already; True when it had."""
        # Two requests with one key at once on this replica: the second waits and finds the run.
        async with self._starting.setdefault(instance_id, asyncio.Lock()):
            existing = await asyncio.to_thread(self._workflows.get_workflow_state, instance_id)
            if existing is None:
                try:
                    await self.run(agent, task, instance_id=instance_id, wait=False, log=False)
                    return instance_id, False
                except Exception:  # another replica started it in the meantime, or Dapr failed
                    existing = await asyncio.to_thread(self._workflows.get_workflow_state, instance_id)
                    if existing is None:
                        raise
        if json.loads(existing.serialized_input or "{}").get("task") != task["task"]:
            raise HTTPException(422, "this Idempotency-Key was used for another task; use a new key")
        return instance_id, True

    def _status(self) -> Callable[..., Any]:
        async def status(instance_id: str) -> dict[str, Any]:
            """The run's status, and its answer once completed, from the workflow's store alone.
            dapr-agents' route (1.0.9) also reads the run's entry in agent-workflow for the questions
            the agent asked its user, none here; with Redis down that read waited out three rounds of
            resiliency.yaml's retries, about 150 s, before the route answered."""
            state = await asyncio.to_thread(self._workflows.get_workflow_state, instance_id)
            if state is None:
                raise HTTPException(404, "Workflow instance not found.")
            payload = state.to_json()
            payload["runtime_status"] = state.runtime_status.name
            for field in ("created_at", "last_updated_at"):
                if payload.get(field):
                    payload[field] = payload[field].isoformat()
            return {**payload, "pending_inputs": []}

        return status

    def _terminate(self) -> Callable[..., Any]:
        async def terminate(instance_id: str) -> dict[str, str]:
            """End a run that has not ended: its workflow stops, and no step after it runs."""
            state = await self._existing_run(instance_id)
            if state.runtime_status in ENDED:
                raise HTTPException(409, f"the run has ended already ({state.runtime_status.name})")
            await asyncio.to_thread(self._workflows.terminate_workflow, instance_id, output="Terminated by request")
            return {"instance_id": instance_id, "status": "terminated"}

        return terminate

    def _purge(self, agent: DurableAgent) -> Callable[..., Any]:
        async def purge(instance_id: str) -> dict[str, str]:
            """Delete an ended run: its workflow state and the agent's entry for it."""
            state = await self._existing_run(instance_id)
            if state.runtime_status not in ENDED:
                raise HTTPException(409, f"the run is {state.runtime_status.name}: terminate it first")
            await asyncio.to_thread(self._workflows.purge_workflow, instance_id)
            await asyncio.to_thread(agent.purge, instance_id)
            return {"instance_id": instance_id, "status": "purged"}

        return purge

    async def _existing_run(self, instance_id: str) -> Any:
        state = await asyncio.to_thread(self._workflows.get_workflow_state, instance_id, fetch_payloads=False)
        if state is None:
            raise HTTPException(404, "no run has that id")
        return state


async def _serve(server: uvicorn.Server, once_listening: Callable[[], Awaitable[None]] | None = None) -> None:
    asyncio.get_running_loop().set_default_executor(event_loop_executor())
    serving = asyncio.create_task(server.serve())
    while once_listening and not server.started and not serving.done():
        await asyncio.sleep(0.05)
    if once_listening and server.started:
        try:
            await once_listening()
        except BaseException:
            server.should_exit = True
            await serving
            raise
    await serving


async def _connect_tools(agent: DurableAgent, start_worker: Callable[[], None], connected: asyncio.Event) -> None:
    """The MCP servers' tools, checked against the approvals the file of servers names; then the runs."""
    await connect(agent)
    tools = agent.tool_executor.get_tool_names()
    hooks = getattr(agent, "_hooks", None)  # dapr-agents 1.0.9 keeps them only there
    for hook in hooks.before_tool_call if hooks else []:
        if isinstance(hook, ApprovalsNamedIn):
            hook.check(tools)
    await asyncio.to_thread(start_worker)
    connected.set()


async def _sidecar_failed(request: Request, error: Exception) -> JSONResponse:
    """A call to the sidecar failed, read again (steady_reads.py) if it was a read: the client may
    ask again in a moment, and nothing is lost."""
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    log.warning("%s %s: the sidecar answered %s", request.method, request.url.path, details)
    detail = "the agent's sidecar could not answer just now; ask again in a moment"
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})


async def _serving() -> dict[str, str]:
    """For Kubernetes' probes and Dapr's app health check: the runtime started before the app serves."""
    return {"status": "serving"}


def _remove_routes(app: FastAPI, unwanted: Callable[[str], bool]) -> None:
    app.router.routes[:] = [r for r in app.router.routes if not (isinstance(r, APIRoute) and unwanted(r.path))]


def _replace_route(app: FastAPI, path: str, endpoint: Callable[..., Any], method: str = "POST") -> None:
    """Put `endpoint` where dapr-agents mounted its `method` `path`, keeping its summary for the docs."""
    (mounted,) = [r for r in app.router.routes if isinstance(r, APIRoute) and r.path == path and method in r.methods]
    _remove_routes(app, lambda p: p == path)
    app.add_api_route(path, endpoint, methods=[method], summary=mounted.summary, tags=mounted.tags)
