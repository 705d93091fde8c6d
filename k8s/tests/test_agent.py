"""The agent on the cluster: deploy/ applied as docs/kubernetes.md says, and the stories
the local suite tells, told again against pods. Run by `make k8s-test` after `make k8s-up`.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
import requests
import yaml

from k8s.tests.agent import (
    MCP_APP_ID,
    NAMESPACE,
    OVERLAY,
    TOOL_APP_ID,
    Agent,
    deploy,
    key_digest,
    logs_of_namespace,
)
from k8s.tests.conftest import env, kubectl, kubectl_json
from service_runner.once_only import run_id
from tests.conftest import answer_of, page_command, port_open, trace_of_run, wait_for
from tests.llm_server import HAIKU

# docs/kubernetes.md's commands: a port-forward to the Service, the token from its Secret, a run.
PORT_FORWARD = page_command("kubectl port-forward")
READ_TOKEN = page_command('TOKEN="$(kubectl get secret')
INVOKE = page_command("curl -X POST http://localhost:3500", 'token: $TOKEN"')
TASK = "Write a haiku about programming."
# The overlay's one schedule (k8s/tests/overlay/schedules.yaml), ticking from the deploy on.
(SCHEDULE,) = yaml.safe_load((OVERLAY / "schedules.yaml").read_text())["schedules"]
SCHEDULE_PERIOD_S = int(SCHEDULE["schedule"].removeprefix("@every ").removesuffix("s"))


@pytest.fixture(scope="module")
def agent() -> Iterator[Agent]:
    with deploy() as deployed:
        yield deployed


def a_task(about: str) -> str:
    return f"Write a haiku about {about} ({uuid.uuid4().hex[:8]})."


def start_run(agent: Agent, task: str) -> str:
    """POST /run with an Idempotency-Key, retried with the same key until the agent takes it: the
    retry a caller makes when the pod that had its request went away. The run's instance id."""
    key = hashlib.sha256(task.encode()).hexdigest()

    def accepted() -> str | None:
        try:
            answer = agent.call("POST", "/run", json={"task": task}, headers={"Idempotency-Key": key})
        except requests.RequestException:
            return None
        return answer.json()["instance_id"] if answer.status_code == 200 else None

    return wait_for(accepted, 120, f"the agent to accept {task!r}", interval=1)


def force_delete(pod: str) -> None:
    kubectl("delete", "pod", pod, "-n", NAMESPACE, "--grace-period=0", "--force")


def test_the_agent_pod_runs_with_its_injected_sidecar_and_mtls(agent: Agent) -> None:
    (pod,) = agent.pods()

    assert [c["name"] for c in pod["spec"]["containers"]] == ["agent", "daprd"], "the injector added no sidecar"
    agent_container = pod["spec"]["containers"][0]
    assert agent_container["image"] == agent.image  # built here from ./Dockerfile
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # The sidecar starts only with a workload certificate from sentry; mTLS is on for the cluster.
    daprd = kubectl("logs", pod["metadata"]["name"], "-n", NAMESPACE, "-c", "daprd").stdout
    assert "Security is initialized successfully" in daprd
    # PostgreSQL holds the workflows' state: Dapr has no reason to warn it is unfit for production.
    assert "should not be used in production" not in daprd
    assert kubectl_json("get", "configuration", "daprsystem", "-n", "dapr-system")["spec"]["mtls"]["enabled"] is True
    print(f"\nagent pod Ready {agent.ready_after:.0f}s after `kubectl apply`")


def test_post_run_through_the_sidecar_with_the_api_token_completes_with_the_models_answer(agent: Agent) -> None:
    task = a_task("programming")
    refused = agent.call("POST", "/run", token="not-the-token", json={"task": task})
    assert refused.status_code == 401, refused.text

    started = agent.call("POST", "/run", json={"task": task})

    assert started.status_code == 200, started.text
    status = agent.outcome(started.json()["instance_id"])
    assert status["runtime_status"] == "COMPLETED", status
    assert answer_of(status) == HAIKU
    asked = [r for r in agent.llm("GET", "/requests") if task in r["asked"]]
    assert len(asked) == 1  # one task, one LLM call
    assert asked[0]["key_sha256"] == key_digest(agent.openai_key)  # the Secret's key reached the model


def test_the_readmes_port_forward_and_curl_start_a_run_that_completes(agent: Agent) -> None:
    forward = subprocess.Popen(
        shlex.split(PORT_FORWARD),
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: port_open(3500) or forward.poll() is not None, 30, "the port-forward to listen on 3500")
        assert forward.poll() is None, forward.communicate()[0]
        curl = subprocess.run(["bash", "-c", f"{READ_TOKEN}\n{INVOKE}"], env=env(), capture_output=True, text=True)
    finally:
        forward.terminate()
        forward.wait(10)

    assert curl.returncode == 0, curl.stderr
    status = agent.outcome(json.loads(curl.stdout)["instance_id"])
    assert status["runtime_status"] == "COMPLETED", status
    assert answer_of(status) == HAIKU


def test_a_task_published_to_assistant_topic_runs(agent: Agent) -> None:
    task = a_task("message queues")
    event_id = uuid.uuid4().hex
    event = {"specversion": "1.0", "id": event_id, "source": "k8s-tests", "type": "com.example.task"}

    published = agent.publish({**event, "datacontenttype": "application/json", "data": {"task": task}})

    assert published.status_code == 204, published.text
    # The service names a published run after its CloudEvent (service_runner/once_only.py).
    status = agent.outcome(run_id("message", "k8s-tests", event_id))
    assert status["runtime_status"] == "COMPLETED", status
    assert answer_of(status) == HAIKU
    assert agent.llm_calls_for(task) == 1


def test_a_run_whose_pod_is_force_deleted_during_its_llm_call_completes_once_on_the_new_pod(agent: Agent) -> None:
    task = a_task("crash recovery")
    (old_pod,) = agent.wait_ready(1)
    agent.llm("POST", "/hold")
    instance_id = start_run(agent, task)
    wait_for(lambda: agent.llm_calls_for(task) == 1, 30, "the run's LLM call to reach the model")

    started = time.monotonic()
    force_delete(old_pod)
    try:
        (new_pod,) = agent.wait_ready(1)
        status = agent.outcome(instance_id, timeout=180)
    finally:
        agent.llm("POST", "/release")  # the held answer has no sidecar left to go to

    assert new_pod != old_pod
    assert status["runtime_status"] == "COMPLETED", status
    assert answer_of(status) == HAIKU
    assert start_run(agent, task) == instance_id  # one run for the task, not two
    # The interrupted call is made again by the new pod, once: the only step run twice.
    assert agent.llm_calls_for(task) == 2
    print(f"\nforce-deleted pod's run completed on the new pod {time.monotonic() - started:.0f}s later")


def scheduled_runs(agent: Agent) -> list[dict[str, Any]]:
    """The runs GET /schedules lists for the overlay's schedule (its last 10 ticks), oldest first."""
    answer = agent.call("GET", "/schedules")
    assert answer.status_code == 200, answer.text
    (schedule,) = [s for s in answer.json() if s["name"] == SCHEDULE["name"]]
    return schedule["runs"][::-1]


def tick_of(run: dict[str, Any]) -> float:
    return datetime.fromisoformat(run["tick"]).timestamp()


def test_with_two_replicas_each_tick_of_the_schedule_runs_once(agent: Agent) -> None:
    kubectl("scale", "deployment", "durable-agent", "-n", NAMESPACE, "--replicas=2")
    try:
        pods = agent.wait_ready(2)

        def between_ticks() -> tuple[float, int] | None:
            """The latest tick and the schedule's LLM calls so far, once that tick's run has ended."""
            runs = scheduled_runs(agent)
            ended = runs and runs[-1]["runtime_status"] == "COMPLETED"
            if ended and time.time() - tick_of(runs[-1]) < SCHEDULE_PERIOD_S - 2:
                return tick_of(runs[-1]), agent.llm_calls_for(SCHEDULE["task"])
            return None

        since, calls_before = wait_for(between_ticks, 60, "a run of the schedule to end between two ticks", 0.5)

        def six_more() -> list[dict[str, Any]] | None:
            runs = [r for r in scheduled_runs(agent) if tick_of(r) > since]
            return runs if len(runs) >= 6 and all(r["runtime_status"] == "COMPLETED" for r in runs) else None

        wait_for(six_more, 90, f"six more ticks of {SCHEDULE['name']} to run on two replicas", 1)
        # The schedule ends here, so that no tick is counted in a later story: its job goes.
        pod_ip = kubectl_json("get", "pod", pods[0], "-n", NAMESPACE)["status"]["podIP"]
        job = f"http://{pod_ip}:3500/v1.0/jobs/{SCHEDULE['name']}"
        deleted = requests.delete(job, headers={"dapr-api-token": agent.api_token}, timeout=10)
        assert deleted.status_code in (200, 204), deleted.text
        time.sleep(3)  # a tick already sent ends its start
        runs = [r for r in scheduled_runs(agent) if tick_of(r) > since]
    finally:
        kubectl("scale", "deployment", "durable-agent", "-n", NAMESPACE, "--replicas=1")

    ticks = [tick_of(r) for r in runs]
    calls = agent.llm_calls_for(SCHEDULE["task"]) - calls_before
    print(f"\n2 replicas, {SCHEDULE['schedule']}: {len(runs)} ticks after {since:.0f}, {calls} LLM calls")
    assert ticks == [since + SCHEDULE_PERIOD_S * (n + 1) for n in range(len(runs))], "a tick was missed"
    assert all(answer_of(agent.outcome(r["instance_id"])) == HAIKU for r in runs)
    assert calls == len(runs)  # one run per tick, one LLM call per run


def test_with_two_replicas_fifty_runs_at_once_complete_once_when_one_pod_is_killed(agent: Agent) -> None:
    kubectl("scale", "deployment", "durable-agent", "-n", NAMESPACE, "--replicas=2")
    agent.wait_ready(2)
    agent.llm("POST", "/latency?seconds=5")  # so that runs are in the middle of their LLM call when a pod dies
    agent.llm("POST", "/gather?calls=40&within=120")  # and no call is answered before 40 wait at once
    tasks = [a_task(f"replica {i}") for i in range(50)]
    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            instance_ids = list(pool.map(lambda task: start_run(agent, task), tasks))
            wait_for(lambda: agent.llm("GET", "/in-flight")["in_flight"] >= 40, 150, "40 runs in their LLM call")
            # Counted before the kill: afterwards the dead pod's calls still wait at the LLM while
            # the live pod makes them again.
            at_once = agent.llm("GET", "/in-flight")["most_in_flight"]
            killed, activities = agent.busiest_pod()
            force_delete(killed)
            outcomes = list(pool.map(lambda instance: agent.outcome(instance, timeout=240), instance_ids))
    finally:
        agent.llm("POST", "/latency?seconds=0")
        kubectl("scale", "deployment", "durable-agent", "-n", NAMESPACE, "--replicas=1")

    calls = [agent.llm_calls_for(task) for task in tasks]
    completed = sum(o["runtime_status"] == "COMPLETED" and answer_of(o) == HAIKU for o in outcomes)
    print(
        f"\n2 replicas, 50 runs posted at once, the LLM saw {at_once} calls at once before the kill; {killed} killed,"
        f" hosting {activities} activities: started {len(set(instance_ids))}, completed {completed},"
        f" duplicated {len(instance_ids) - len(set(instance_ids))}, lost {50 - completed};"
        f" LLM calls {sum(calls)} ({sum(c > 1 for c in calls)} runs' call repeated after the kill)"
    )
    assert at_once >= 40, f"the two replicas had at most {at_once} of 50 runs in their LLM call at once"
    assert len(set(instance_ids)) == 50  # one run per task: no task started twice
    assert completed == 50  # none lost
    assert [start_run(agent, task) for task in tasks] == instance_ids  # and each is still the one run
    assert all(1 <= c <= 2 for c in calls), calls  # a call is repeated only if its pod died during it
    assert any(c == 2 for c in calls), "the killed pod was running none of the runs: the story proved nothing"


def tool_task(about: str) -> str:
    return f"Write a haiku about {about} and publish it ({uuid.uuid4().hex[:8]})."


def approvals_listed(agent: Agent) -> dict[str, dict[str, Any]]:
    """The tool agent's waiting approvals by run, as its Service answers (either pod, whichever it reaches)."""
    try:
        answer = agent.call("GET", "/hitl/approvals", app_id=TOOL_APP_ID)
    except requests.RequestException:  # a pod just deleted, still behind the Service for a moment
        return {}
    return {approval["instance_id"]: approval for approval in answer.json()} if answer.status_code == 200 else {}


def waiting_approvals(agent: Agent, instance_ids: list[str]) -> list[dict[str, Any]]:
    def all_listed() -> list[dict[str, Any]] | None:
        listed = approvals_listed(agent)
        return [listed[i] for i in instance_ids] if set(instance_ids) <= set(listed) else None

    return wait_for(all_listed, 90, f"the tool agent to list approvals for {len(instance_ids)} runs", interval=1)


def approve(agent: Agent, approval: dict[str, Any]) -> requests.Response:
    """The decision through the Service, sent again if it reached no pod: the retry a caller makes when
    the Service still led to a pod just deleted (refused, so nothing was decided)."""
    path = f"/hitl/approvals/{approval['approval_request_id']}/respond"

    def sent() -> tuple[requests.Response] | None:  # a tuple: a Response is falsy unless it is a 2xx
        try:
            return (agent.call("POST", path, app_id=TOOL_APP_ID, json={"approved": True}),)
        except requests.ConnectionError:
            return None

    (answer,) = wait_for(sent, 60, f"the decision on {approval['approval_request_id']} to reach a pod", interval=1)
    return answer


def tool_runs(agent: Agent, instance_id: str) -> int:
    """Lines the tool wrote for the run, in the outboxes of the tool agent's pods now."""
    lines = 0
    for pod in agent.pods(TOOL_APP_ID):
        done = kubectl(
            "exec", pod["metadata"]["name"], "-n", NAMESPACE, "-c", "agent", "--", "cat", "outbox.txt", check=False
        )
        lines += sum(line.startswith(f"{instance_id}:") for line in done.stdout.splitlines())
    return lines


def assert_tool_ran_once_and_completed(agent: Agent, task: str, instance_id: str) -> None:
    outcome = agent.outcome(instance_id, timeout=180, app_id=TOOL_APP_ID)
    assert outcome["runtime_status"] == "COMPLETED", outcome
    assert answer_of(outcome).startswith(f"The tool answered: Published as {instance_id}:")
    assert tool_runs(agent, instance_id) == 1
    assert agent.llm_calls_for(task) == 2  # one that asks for the tool, one that answers with its result


def test_the_tool_agents_two_replicas_list_an_approval_and_either_takes_the_decision(agent: Agent) -> None:
    pods = agent.wait_ready(2, app_id=TOOL_APP_ID)
    tasks = [tool_task(f"replica approvals {n}") for n in range(4)]
    answers = [agent.call("POST", "/run", app_id=TOOL_APP_ID, json={"task": task}) for task in tasks]
    instance_ids = [answer.json()["instance_id"] for answer in answers]
    approvals = waiting_approvals(agent, instance_ids)

    # Each pod's own app, through its own sidecar, lists all four, wherever the runs are.
    for pod in agent.pods(TOOL_APP_ID):
        url = f"http://{pod['status']['podIP']}:3500/v1.0/invoke/{TOOL_APP_ID}/method/hitl/approvals"
        listed = requests.get(url, headers={"dapr-api-token": agent.api_token}, timeout=30).json()
        assert set(instance_ids) <= {approval["instance_id"] for approval in listed}, pod["metadata"]["name"]
    decisions = [approve(agent, approval) for approval in approvals]

    assert [d.status_code for d in decisions] == [200] * 4, [d.text for d in decisions]
    for task, instance_id in zip(tasks, instance_ids, strict=True):
        assert_tool_ran_once_and_completed(agent, task, instance_id)
    assert not set(approvals_listed(agent)) & set(instance_ids)
    print(f"\ntool agent, 2 replicas ({', '.join(pods)}): 4 approvals listed by both, approved through the Service")


def test_a_tool_agent_pod_force_deleted_while_approvals_wait_leaves_them_to_the_other(agent: Agent) -> None:
    victim, _ = agent.wait_ready(2, app_id=TOOL_APP_ID)
    tasks = [tool_task(f"surviving approvals {n}") for n in range(4)]
    answers = [agent.call("POST", "/run", app_id=TOOL_APP_ID, json={"task": task}) for task in tasks]
    instance_ids = [answer.json()["instance_id"] for answer in answers]
    approvals = waiting_approvals(agent, instance_ids)

    force_delete(victim)

    assert waiting_approvals(agent, instance_ids) == approvals
    decisions = [approve(agent, approval) for approval in approvals]
    assert [d.status_code for d in decisions] == [200] * 4, [d.text for d in decisions]
    for task, instance_id in zip(tasks, instance_ids, strict=True):
        assert_tool_ran_once_and_completed(agent, task, instance_id)
    agent.wait_ready(2, app_id=TOOL_APP_ID)


def time_server_calls() -> int:
    """The tool calls the MCP time server's pod has answered, as its log (mcp-proxy's) shows them."""
    log = kubectl("logs", "deployment/mcp-time", "-n", NAMESPACE, "--tail=-1").stdout
    return log.count("Processing request of type CallToolRequest")


def test_the_mcp_agent_calls_the_time_server_in_its_own_pod_over_streamable_http(agent: Agent) -> None:
    task = f"What time is it in Tokyo? ({uuid.uuid4().hex[:8]})"
    calls_before = time_server_calls()
    agent.llm("POST", "/tool-call", json={"name": "get_current_time", "arguments": {"timezone": "Asia/Tokyo"}})
    try:
        instance_id = agent.call("POST", "/run", app_id=MCP_APP_ID, json={"task": task}).json()["instance_id"]
        outcome = agent.outcome(instance_id, app_id=MCP_APP_ID)
    finally:
        agent.llm("POST", "/tool-call", json=None)

    assert outcome["runtime_status"] == "COMPLETED", outcome
    assert answer_of(outcome).startswith("The tool answered:") and '"timezone": "Asia/Tokyo"' in answer_of(outcome)
    assert agent.llm_calls_for(task) == 2  # one that asks for the time, one that answers with it
    assert time_server_calls() - calls_before == 1
    (pod,) = agent.pods(MCP_APP_ID)
    restarts = {c["name"]: c["restartCount"] for c in pod["status"]["containerStatuses"]}
    print(f"\nMCP agent: 1 call to the time server's pod, 2 LLM calls; container restarts since the deploy: {restarts}")


def test_the_trace_of_a_run_is_in_zipkin(agent: Agent) -> None:
    instance_id = start_run(agent, a_task("tracing"))
    assert agent.outcome(instance_id)["runtime_status"] == "COMPLETED"
    wanted = {
        "durable-agent-service": {
            "activity||dapr.agents.assistant.call_llm",
            "/dapr.proto.runtime.v1.dapr/conversealpha2",
        },
        "assistant": {"workflowactivity.dapr.agents.assistant.call_llm"},  # the app's own spans
    }
    by_service: dict[str, set[str]] = {}

    def whole() -> bool:
        # The sidecar sends its spans in batches: one may reach Zipkin after the run's last ones.
        by_service.clear()
        for span in trace_of_run(instance_id, zipkin=f"http://{agent.service_ip('zipkin')}:9411/api/v2", timeout=60):
            by_service.setdefault(span["localEndpoint"]["serviceName"], set()).add(span["name"])
        return all(names <= by_service.get(service, set()) for service, names in wanted.items())

    wait_for(lambda: whole() or None, 60, f"the sidecar's and the app's spans of run {instance_id}", interval=2)


def restart_stand_in(agent: Agent, stand_in: str, instance_id: str) -> None:
    """Delete the stand-in's pod; once its StatefulSet has it back, the completed run `instance_id` is
    read back from the volume and a new run completes."""
    kubectl("delete", "pod", f"{stand_in}-0", "-n", NAMESPACE)
    kubectl("rollout", "status", f"statefulset/{stand_in}", "-n", NAMESPACE, "--timeout=120s", timeout=130)

    assert agent.outcome(instance_id)["runtime_status"] == "COMPLETED"
    task = a_task(f"after a restart of {stand_in}")
    assert agent.outcome(start_run(agent, task))["runtime_status"] == "COMPLETED"


def test_runs_survive_a_restart_of_redis_from_its_append_only_file(agent: Agent) -> None:
    instance_id = start_run(agent, a_task("persistence"))
    assert agent.outcome(instance_id)["runtime_status"] == "COMPLETED"

    restart_stand_in(agent, "redis", instance_id)


def test_runs_survive_a_restart_of_postgresql_and_their_state_is_there(agent: Agent) -> None:
    instance_id = start_run(agent, a_task("postgres"))
    assert agent.outcome(instance_id)["runtime_status"] == "COMPLETED"
    rows = agent.workflow_rows(f"SELECT key FROM state WHERE key LIKE '%.workflow||{instance_id}||%'")
    assert any(row.endswith("||metadata") for row in rows), rows

    restart_stand_in(agent, "postgres", instance_id)


def test_the_openai_key_is_in_no_pod_log_and_no_stored_value(agent: Agent) -> None:
    logs = logs_of_namespace() + kubectl("logs", "-n", "dapr-system", "-l", "app=dapr-operator", "--tail=-1").stdout
    values = agent.redis_values()
    holding = "SELECT count(*) FROM state WHERE position(convert_to('{}', 'UTF8') in value) > 0"

    assert agent.openai_key not in logs
    assert agent.openai_key not in values
    assert hashlib.sha256(agent.openai_key.encode()).hexdigest() not in values
    assert "Assistant" in values and HAIKU.splitlines()[0] in values  # what was searched holds the runs
    assert agent.workflow_rows(holding.format(agent.openai_key)) == ["0"]
    assert int(agent.workflow_rows(holding.format(TASK))[0]) > 0  # the same query finds what runs wrote
