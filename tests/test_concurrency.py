"""What one replica holds: every run it holds at once, up to the bound in the Dapr Configuration.

The stand-in LLM counts the calls it is answering at once. A model that takes seconds per call makes
that count, not CPU, the measure of a replica: the stories hold or slow the LLM's answers so that
every run in flight is in its LLM call at the same time.
"""

from __future__ import annotations

import collections
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from tests.conftest import (
    ROOT,
    SERVICE,
    SERVICE_URL,
    DaprRun,
    calls_for,
    metrics,
    peak_rss_mb,
    post_run,
    scheduled_jobs,
    wait_for,
    wait_for_outcome,
)
from tests.llm_server import LLMServer

METRICS_PORT = int(SERVICE.split("--metrics-port ")[1].split()[0])
# The local scheduler's (scripts/stack.sh).
SCHEDULER_METRICS_PORT = int(
    re.findall(r'/scheduler" .*?--metrics-port (\d+)', (ROOT / "scripts" / "stack.sh").read_text(), re.DOTALL)[0]
)


def run_all(tasks: list[str], posting: int = 64, polling: int = 16) -> collections.Counter[str]:
    """Post every task at once (`posting` requests in flight), then wait for each run's end."""
    with ThreadPoolExecutor(max_workers=posting) as pool:
        runs = list(pool.map(post_run, tasks))
    with ThreadPoolExecutor(max_workers=polling) as pool:
        outcomes = pool.map(lambda run: wait_for_outcome(run["status_url"], timeout=900, interval=1), runs)
        return collections.Counter(outcome["runtime_status"] for outcome in outcomes)


def llm_calls_per_task(llm: LLMServer, tasks: list[str]) -> dict[int, int]:
    """How many tasks cost how many LLM calls: {1: len(tasks)} when each cost one."""
    return dict(collections.Counter(calls_for(llm, task) for task in tasks))


def deployment_memory_limit_mb() -> float:
    """The agent container's memory limit in deploy/agent.yaml, in MB (MiB)."""
    documents = yaml.safe_load_all((ROOT / "deploy" / "agent.yaml").read_text())
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    (agent,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "agent"]
    limit = agent["resources"]["limits"]["memory"]
    assert limit.endswith("Mi"), limit
    return int(limit[:-2])


def health_probes() -> int:
    """How often the sidecar has been asked `GET /v1.0/healthz/outbound`, from its Prometheus metrics:
    every new Dapr client of the Python SDK asks it once, before its first call."""
    served = r"^dapr_http_server_request_count\{([^}]*)\} (\S+)$"
    counts = re.findall(served, metrics(METRICS_PORT), re.MULTILINE)
    return sum(int(float(value)) for labels, value in counts if 'path="/v1.0/healthz/outbound"' in labels)


def sidecar_calls() -> collections.Counter[str]:
    """How often the agent has called each gRPC method of its sidecar, from the sidecar's metrics."""
    calls: collections.Counter[str] = collections.Counter()
    rpcs = re.findall(r"^dapr_grpc_io_server_completed_rpcs\{([^}]*)\} (\S+)$", metrics(METRICS_PORT), re.MULTILINE)
    for labels, value in rpcs:
        calls[re.findall(r'grpc_server_method="[^"]*/([^"/]+)"', labels)[0]] += int(float(value))
    return calls


def test_64_runs_posted_at_once_are_all_in_their_llm_call_together_and_complete_once(
    start_service: Callable[[], DaprRun], llm: LLMServer
) -> None:
    start_service()
    batch = uuid.uuid4().hex[:8]
    tasks = [f"Write haiku number {n} about concurrency ({batch})." for n in range(64)]
    llm.state.latency_s = 2.0  # a real model's pace
    llm.state.gather(48, within_s=120)  # no call is answered until 48 wait at once, or 2 minutes pass
    started = time.monotonic()

    statuses = run_all(tasks)

    assert statuses == {"COMPLETED": 64}, statuses
    assert llm.state.most_in_flight >= 48, f"the LLM saw at most {llm.state.most_in_flight} calls at once"
    assert llm_calls_per_task(llm, tasks) == {1: 64}
    print(f"\n64 runs, LLM 2 s: at most {llm.state.most_in_flight} calls at once, {time.monotonic() - started:.1f} s")


def test_1000_runs_past_a_bound_of_32_wait_their_turn_and_all_complete_once(
    dapr_env: dict[str, str], llm: LLMServer, tmp_path: Path
) -> None:
    config = yaml.safe_load((ROOT / "config" / "dapr-config.yaml").read_text())
    workflow = config["spec"]["workflow"]
    workflow["maxConcurrentActivityInvocations"] = workflow["maxConcurrentWorkflowInvocations"] = 32
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    command = SERVICE.replace("dapr run", f"dapr run --config {tmp_path / 'config.yaml'}", 1)
    service = DaprRun(command, dapr_env, "bound-32")
    batch = uuid.uuid4().hex[:8]
    tasks = [f"Write haiku number {n} about patience ({batch})." for n in range(1000)]
    llm.state.latency_s = 0.5
    try:
        service.wait_until_ready(SERVICE_URL)
        started = time.monotonic()
        statuses = run_all(tasks)
        elapsed = time.monotonic() - started
        agent_peak = peak_rss_mb(service.sidecar["appPid"])
    finally:
        service.stop()

    assert statuses == {"COMPLETED": 1000}, statuses
    assert llm_calls_per_task(llm, tasks) == {1: 1000}
    assert llm.state.most_in_flight <= 32, f"the bound of 32 let {llm.state.most_in_flight} calls through at once"
    assert agent_peak < deployment_memory_limit_mb(), f"the agent's RSS reached {agent_peak:.0f} MiB"
    print(
        f"\n1000 runs, bound 32, LLM 0.5 s: at most {llm.state.most_in_flight} calls at once, {elapsed:.0f} s, "
        f"agent peak RSS {agent_peak:.0f} MiB"
    )


def test_the_agent_builds_no_dapr_client_per_run_and_reads_its_registry_once(
    start_service: Callable[[], DaprRun], llm: LLMServer
) -> None:
    """dapr-agents builds a Dapr client for every state operation and LLM call (34 per run, counted
    here) unless handed one (service_runner/dapr_client.py), its LLM client reads the sidecar's
    metadata on every call unless it is kept, and its runner reads the agent registry
    for every run it starts, on top of the workflow's own read (ServiceRunner.discover_entry). A new
    dapr-agents that builds its clients or finds its workflow some other way shows here."""
    start_service()
    batch = uuid.uuid4().hex[:8]
    tasks = [f"Write haiku number {n} about reuse ({batch})." for n in range(50)]
    run_all(tasks[:1])  # the first run sets up what every later run reuses
    probes_before, calls_before = health_probes(), sidecar_calls()

    statuses = run_all(tasks[1:], posting=8)

    probes = health_probes() - probes_before
    calls = sidecar_calls() - calls_before
    assert statuses == {"COMPLETED": 49}, statuses
    assert probes == 0, f"{probes} new Dapr clients for 49 runs"
    assert calls["StartInstance"] == calls["ConverseAlpha2"] == 49, calls
    assert calls["GetBulkState"] == 49, f"{calls['GetBulkState']} reads of the registry for 49 runs"
    # The LLM client's metadata read is cached for a minute: one, or two if the minute ends meanwhile.
    assert calls["GetMetadata"] <= 2, f"{calls['GetMetadata']} reads of the sidecar's metadata for 49 runs"
    assert calls_for(llm, tasks[1]) == 1


def scheduler_jobs() -> collections.Counter[str]:
    """The jobs Dapr's scheduler has created and fired so far, from its Prometheus metrics."""
    jobs: collections.Counter[str] = collections.Counter()
    counters = r'^dapr_scheduler_jobs_(created|triggered)_total\{type="actor"\} (\S+)$'
    for what, value in re.findall(counters, metrics(SCHEDULER_METRICS_PORT), re.MULTILINE):
        jobs[what] += int(float(value))
    return jobs


def test_a_run_is_ten_jobs_in_daprs_scheduler_and_leaves_one_its_purge_due_in_a_day(
    start_service: Callable[[], DaprRun], llm: LLMServer, dapr_env: dict[str, str]
) -> None:
    """What the scheduler's share of a run's CPU pays for (docs/production.md): a workflow's reminders,
    each written to the scheduler's etcd and deleted once fired. One starts the run, two serve each of
    its four activities (one runs it, one hands its result back), and one purges the run a day after it
    completes (the retention policy in config/dapr-config.yaml): docs/cost.md lists them."""
    start_service()

    def purges_of(runs: list[dict[str, str]]) -> str | None:
        """The scheduler's list once it holds each run's purge job, its last job, made as the run ends."""
        listed = scheduled_jobs(dapr_env)
        return listed if all(run["instance_id"] in listed for run in runs) else None

    warm_up = post_run("Write a haiku about warming up.")
    wait_for_outcome(warm_up["status_url"])
    wait_for(lambda: purges_of([warm_up]), 10, "the warm-up's purge job")
    before = scheduler_jobs()
    batch = uuid.uuid4().hex[:8]

    runs = [post_run(f"Write haiku number {n} about reminders ({batch}).") for n in range(10)]
    statuses = collections.Counter(wait_for_outcome(run["status_url"])["runtime_status"] for run in runs)

    listed = wait_for(lambda: purges_of(runs), 10, "each run's purge job")
    jobs = scheduler_jobs() - before
    assert statuses == {"COMPLETED": 10}, statuses
    assert jobs["created"] == 100, jobs
    # A retention job of an earlier day's run may fire meanwhile too.
    assert jobs["triggered"] >= 90, jobs
    for run in runs:
        (job,) = [line.split() for line in listed.splitlines() if run["instance_id"] in line]
        assert job[0] == f"actor/dapr.internal.default.durable-agent-service.retentioner/{run['instance_id']}/retention"
        assert re.fullmatch(r"\+(23\.\d|24\.0)h", job[1]), job  # due in a day
