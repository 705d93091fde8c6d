"""`make bench`: what durability costs, against the test LLM at a fixed latency.

Measures, in one run so the figures compare: the floor (the openai SDK calling the LLM directly),
the service (POST /run until COMPLETED, sequential and concurrent; each run split by workflow step;
CPU per run), the service at a real model's latency with many runs in flight, before and after its
thread pools were sized and its Dapr client shared, the same service untuned and with tracing off,
the one-shot command, memory and storage per run (PostgreSQL and Redis), and the workflow state kept on Redis
as it was before PostgreSQL. Writes RESULTS.md and latency.png into the output folder.
Needs the stack up (`make up`). `--smoke` runs a few iterations, for the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import matplotlib
import openai
import requests
import yaml
from dapr.ext.workflow import DaprWorkflowClient, WorkflowState, WorkflowStatus

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from scripts.workflow_history import fetch_history  # noqa: E402
from tests.conftest import (  # noqa: E402
    LOCAL_MODEL,
    ONE_SHOT,
    PORT_TAKEN,
    SERVICE,
    SERVICE_URL,
    TASK,
    DaprRun,
    local_model_env,
    peak_rss_mb,
    post_run,
    psql,
    redis_batch,
    redis_cli,
    user_env,
    wait_for_outcome,
)
from tests.llm_server import LLMServer  # noqa: E402
from tests.test_retention import shortened  # noqa: E402


@dataclass(frozen=True)
class Plan:
    latencies_s: tuple[float, ...]
    sequential_runs: int
    concurrency: tuple[int, ...]
    runs_per_slot: int  # each concurrency level runs this many runs per slot in flight, at least 16
    repeats: int
    one_shots: int
    storage_runs: int
    model_latency_s: float  # "At a real model's latency": the LLM's answer time there
    model_levels: tuple[int, ...]  # runs in flight there; each level runs twice as many runs
    local_runs: int  # "The local model": haikus asked of it directly, then as many runs through the service
    local_at_once: int  # then this many runs at once


FULL = Plan((0.0, 0.5), 30, (1, 8, 32), 4, 3, 3, 1000, 2.0, (1, 16, 64, 256), 10, 4)
SMOKE = Plan((0.0,), 3, (1, 8), 1, 1, 1, 10, 0.2, (1, 4), 2, 2)


# The local stack's processes (scripts/stack.sh, whose pid files these are), beside the app and daprd.
STACK_PROCESSES = {
    **{"scheduler": "scheduler", "placement": "placement", "postgres": "PostgreSQL"},
    **{"redis": "Redis", "zipkin": "Zipkin"},
}
PARTS_SHOWN = ("agent", "daprd", *STACK_PROCESSES.values(), "kernel")
RETENTION_S = 20  # "After retention": every retention and TTL shortened to this, to see what is left
ONE_SHOT_PHASES = ("sidecar ready", "agent ready", "first LLM request", "exit")


@dataclass(frozen=True)
class PerTask:
    """What one task costs a service, at one LLM latency."""

    p50_ms: float  # one run at a time
    runs_per_s: float  # at the plan's highest concurrency
    llm_calls: float  # LLM requests per run


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def spread(values: list[float]) -> str:
    """Median of repetitions, with min and max."""
    return f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"


def runs_at(plan: Plan, level: int) -> int:
    return max(16, plan.runs_per_slot * level)


def floor_latencies(llm: LLMServer, runs: int) -> list[float]:
    client = openai.OpenAI(base_url=llm.base_url, api_key="sk-bench")
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": TASK}])
        samples.append(time.perf_counter() - started)
    return samples


def timed_run() -> tuple[str, float]:
    """One run from POST /run to COMPLETED: its instance id and seconds taken."""
    started = time.perf_counter()
    run = post_run(TASK)
    outcome = wait_for_outcome(run["status_url"], timeout=600, interval=0.01)
    assert outcome["runtime_status"] == "COMPLETED", outcome
    return run["instance_id"], time.perf_counter() - started


def time_per_part(runs: list[tuple[str, float]]) -> dict[str, float]:
    """Median milliseconds of each part of a run, from the workflow's own history of each."""
    parts: dict[str, list[float]] = {}
    for instance_id, seconds in runs:
        events = fetch_history(instance_id)
        at = [event.timestamp.ToMilliseconds() for event in events]
        kinds = [event.WhichOneof("eventType") for event in events]
        started, ended = at[kinds.index("executionStarted")], at[kinds.index("executionCompleted")]
        scheduled = {
            e.eventId: (e.taskScheduled.name, t) for e, t in zip(events, at, strict=True) if e.HasField("taskScheduled")
        }
        in_activities = 0.0
        for event, time_ms in zip(events, at, strict=True):
            if event.HasField("taskCompleted"):
                name, scheduled_at = scheduled[event.taskCompleted.taskScheduledId]
                parts.setdefault(f"activity {name.rsplit('.', 1)[-1]}", []).append(time_ms - scheduled_at)
                in_activities += time_ms - scheduled_at
        parts.setdefault("workflow turns between activities", []).append(ended - started - in_activities)
        parts.setdefault("outside the workflow", []).append(seconds * 1000 - (ended - started))
    return {name: statistics.median(samples) for name, samples in parts.items()}


# What each part of a run's storage is counted in.
UNITS = {"workflow state": "rows", "agent entries": "keys"}


def stored_per_run(instance_ids: list[str]) -> dict[str, tuple[float, float]]:
    """Mean rows and bytes per run of its workflow state in PostgreSQL (keys and values, as stored),
    and mean keys and bytes (MEMORY USAGE) of the agent's entries in Redis."""
    wanted = set(instance_ids)
    rows = psql(
        "SELECT split_part(key, '||', 3), count(*), sum(pg_column_size(key) + pg_column_size(value)) FROM state"
        " WHERE key LIKE '%.workflow||%' GROUP BY 1"
    )
    workflow = [(int(count), int(size)) for instance_id, count, size in rows if instance_id in wanted]
    entries = [key for key in redis_cli("--scan").split() if ":_" in key and key.rsplit("_", 1)[1] in wanted]
    sizes = redis_batch([f"MEMORY USAGE {key}" for key in entries]).split() if entries else []
    return {
        "workflow state": (sum(c for c, _ in workflow) / len(wanted), sum(size for _, size in workflow) / len(wanted)),
        "agent entries": (len(entries) / len(wanted), sum(int(size) for size in sizes) / len(wanted)),
    }


class RunEnds:
    """Waits for runs to end through the sidecar's workflow API, as a caller holding a connection
    would. Polling the status URL costs the agent and its sidecar CPU of their own, measured apart
    (`status_read_cpu`): at 32 runs in flight, 50 ms polls alone would take more than 2 cores."""

    def __init__(self, service: DaprRun) -> None:
        self._client = DaprWorkflowClient(host="127.0.0.1", port=str(service.sidecar["grpcPort"]))

    def wait(self, instance_id: str) -> WorkflowState:
        deadline = time.monotonic() + 900
        while True:
            try:
                left = int(deadline - time.monotonic())
                state = self._client.wait_for_workflow_completion(instance_id, timeout_in_seconds=left)
                break
            except grpc.RpcError as error:  # the sidecar dropped the wait (an overloaded one does): wait again
                if time.monotonic() > deadline or error.code() not in (
                    grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.UNAVAILABLE,
                ):
                    raise
                time.sleep(0.5)
        assert state is not None and state.runtime_status == WorkflowStatus.COMPLETED, state
        return state


def per_task(llm: LLMServer, plan: Plan, ends: RunEnds) -> PerTask:
    """p50 of runs one at a time, LLM requests per run, and runs/s at the highest concurrency."""
    before = len(llm.state.chat_requests())
    p50 = statistics.median(timed_run()[1] for _ in range(plan.sequential_runs)) * 1000
    calls = (len(llm.state.chat_requests()) - before) / plan.sequential_runs
    level = max(plan.concurrency)
    rate = statistics.median(throughput(level, runs_at(plan, level), ends) for _ in range(plan.repeats))
    return PerTask(p50, rate, calls)


def summarizing_service(work: Path) -> str:
    """The service as it was before it turned the agent's memory off, when dapr-agents summarized
    every run for memory with a second LLM call: the command that starts it."""
    script = (ROOT / "durable_agent_service.py").read_text()
    memory_off = re.search(r"^agent\.memory = None.*\n", script, re.MULTILINE)
    assert memory_off, "durable_agent_service.py no longer turns the agent's memory off"
    (work / "durable_agent_service.py").write_text(script.replace(memory_off[0], ""))
    return SERVICE.replace("python durable_agent_service.py", f"python {work}/durable_agent_service.py")


def measure_summarizing(env: dict[str, str], llm: LLMServer, plan: Plan, work: Path) -> tuple[dict, dict]:
    """The summarizing service at each LLM latency, and where its time goes at 0 ms."""
    service = DaprRun(summarizing_service(work), {**env, "PYTHONPATH": str(ROOT)}, "bench-summarizing")
    figures: dict[float, PerTask] = {}
    try:
        service.wait_until_ready(SERVICE_URL)
        timed_run()
        ends = RunEnds(service)
        for latency in plan.latencies_s:
            llm.state.latency_s = latency
            figures[latency] = per_task(llm, plan, ends)
        llm.state.latency_s = 0.0
        split = time_per_part([timed_run() for _ in range(plan.sequential_runs)])
    finally:
        service.stop()
    return figures, split


def throughput(level: int, runs: int, ends: RunEnds) -> float:
    """Completed runs per second with `level` runs in flight at a time."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=level) as pool:
        list(pool.map(lambda _: ends.wait(post_run(TASK)["instance_id"]), range(runs)))
    return runs / (time.perf_counter() - started)


@dataclass(frozen=True)
class Level:
    """Runs with `in_flight` at a time, at a real model's latency."""

    in_flight: int
    runs_per_s: float
    p50_s: float
    p95_s: float
    llm_at_once: int  # the most calls the LLM was answering at once
    cpu_ms: dict[str, float]  # CPU per run, by part (cpu_ms_per_run)
    busy: float  # the share of the machine's cores busy meanwhile
    peak_rss_mb: dict[str, float]  # after this level and those before it
    failed: str = ""  # what went wrong, when the level could not be measured


# The service as it was before service_runner sized its thread pools and shared one Dapr client: the
# defaults of cpu_count + 4 threads, and a new Dapr client for every state operation and LLM call.
BEFORE_SIZING = """
import runpy
from concurrent.futures import ThreadPoolExecutor

from dapr.clients import DaprClient
from dapr.ext.workflow import WorkflowRuntime

import service_runner.runner as runner


class NewClientEachTime(runner.SharedDaprClient):
    def __call__(self) -> DaprClient:
        return DaprClient()

    def hand_to(self, agent: object) -> None:
        pass


runner.workflow_runtime = WorkflowRuntime
runner.event_loop_executor = ThreadPoolExecutor
runner.SharedDaprClient = NewClientEachTime
runpy.run_path("durable_agent_service.py", run_name="__main__")
"""


def runs_in_flight(level: int, runs: int, ends: RunEnds) -> tuple[float, list[float]]:
    """Runs/s and each run's seconds from POST /run to the completion Dapr recorded, `level` in flight
    at a time."""

    def one_run(_: int) -> tuple[float, float]:
        posted = time.time()
        done = ends.wait(post_run(TASK)["instance_id"]).last_updated_at.timestamp()
        return posted, done

    started = time.time()
    with ThreadPoolExecutor(max_workers=level) as pool:
        times = list(pool.map(one_run, range(runs)))
    return runs / (max(done for _, done in times) - started), [done - posted for posted, done in times]


def at_model_latency(command: str, name: str, env: dict[str, str], llm: LLMServer, plan: Plan) -> list[Level]:
    """The service started by `command` at the plan's model latency, one level of runs in flight at a time."""
    service = DaprRun(command, env, name)
    levels = []
    try:
        service.wait_until_ready(SERVICE_URL)
        timed_run()
        ends = RunEnds(service)
        llm.state.latency_s = plan.model_latency_s
        pids = stack_pids(service)
        processes = {name: pids[name] for name in ("agent", "daprd")}
        for level in plan.model_levels:
            runs = 2 * level
            cpu_before, started = cpu_by_part(pids), time.monotonic()
            llm.state.reset_counts()
            try:
                rate, took = runs_in_flight(level, runs, ends)
            except requests.Timeout:
                rss = {name: peak_rss_mb(pid) for name, pid in processes.items()}
                failed = "`POST /run` timed out (60 s)"
                levels.append(Level(level, 0, 0, 0, llm.state.most_in_flight, {}, 0, rss, failed))
                break
            cpu = cpu_ms_per_run(cpu_before, cpu_by_part(pids), runs)
            levels.append(
                Level(
                    level,
                    rate,
                    percentile(took, 50),
                    percentile(took, 95),
                    llm.state.most_in_flight,
                    cpu,
                    cpu["machine"] * runs / 1000 / ((time.monotonic() - started) * (os.cpu_count() or 1)),
                    {name: peak_rss_mb(pid) for name, pid in processes.items()},
                )
            )
    finally:
        llm.state.latency_s = 0.0
        service.stop()
    return levels


def one_shot_phases(env: dict[str, str], llm: LLMServer, tries: int = 2) -> dict[str, float]:
    """Seconds from start to: sidecar ready, agent ready (its workflow worker connected), first LLM
    request, exit. A run whose sidecar lost a port `dapr run` picked to another process is run again."""
    llm.state.requests.clear()
    started = time.monotonic()
    phases: dict[str, float] = {}

    def watch_for_the_agent(sidecar_http_port: str) -> None:
        metadata = f"http://127.0.0.1:{sidecar_http_port}/v1.0/metadata"
        while "agent ready" not in phases and process.poll() is None:
            with contextlib.suppress(requests.RequestException, ValueError):
                if requests.get(metadata, timeout=1).json().get("workflows", {}).get("connectedWorkers"):
                    phases["agent ready"] = time.monotonic() - started
            time.sleep(0.02)

    output: list[str] = []
    with subprocess.Popen(
        shlex.split(ONE_SHOT), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        for line in process.stdout or []:
            output.append(line)
            if port := re.search(r"HTTP Port: (\d+)", line):
                threading.Thread(target=watch_for_the_agent, args=(port[1],), daemon=True).start()
            if "Dapr sidecar is up and running" in line:
                phases["sidecar ready"] = time.monotonic() - started
    phases["exit"] = time.monotonic() - started
    if process.returncode != 0 and PORT_TAKEN in "".join(output) and tries > 1:
        return one_shot_phases(env, llm, tries - 1)
    assert process.returncode == 0, f"the one-shot exited with {process.returncode}:\n{''.join(output[-60:])}"
    phases["first LLM request"] = min(r.received_at for r in llm.state.chat_requests()) - started
    return phases


@dataclass(frozen=True)
class LocalModel:
    """The local model (docs/local-model.md) on its own, and the agent's runs on it."""

    direct_s: list[float]  # a chat completion of the task, asked of the server directly
    completion_tokens: list[int]
    runs_s: list[float]  # a run through the service, POST /run to COMPLETED, one at a time
    at_once: int
    at_once_runs_per_s: float
    at_once_s: list[float]  # each run's time with `at_once` in flight

    def section(self) -> str:
        overhead = statistics.median(self.runs_s) - statistics.median(self.direct_s)
        tokens_per_s = sum(self.completion_tokens) / sum(self.direct_s)
        return f"""## The local model, with no key

{LOCAL_MODEL["LOCAL_MODEL_NAME"]} on llama.cpp's server (docs/local-model.md): the task asked of the server
directly {len(self.direct_s)} times, then run through the service as many times, one at a time, then
{len(self.at_once_s)} runs with {self.at_once} at once. Its answers differ in length from one to the next.

| | p50 s | p95 s |
| --- | --- | --- |
| the model alone (a chat completion) | {percentile(self.direct_s, 50):.2f} | {percentile(self.direct_s, 95):.2f} |
| a run through the service | {percentile(self.runs_s, 50):.2f} | {percentile(self.runs_s, 95):.2f} |
| {self.at_once} runs at once, each | {percentile(self.at_once_s, 50):.2f} | {percentile(self.at_once_s, 95):.2f} |

The model wrote a median of {statistics.median(self.completion_tokens):.0f} tokens per answer, {tokens_per_s:.0f}
tokens/s with the prompt's reading included. The agent's overhead against it, the difference of the
medians (the agent's prompt is the longer, its system prompt naming the agent, its role and the date):
{overhead * 1000:.0f} ms. With {self.at_once} at once, {self.at_once_runs_per_s:.2f} runs/s: the server
answers one request at a time, so the runs take turns at the model.
"""


def measure_local_model(plan: Plan) -> LocalModel:
    url = f"http://127.0.0.1:{LOCAL_MODEL['LOCAL_MODEL_PORT']}/v1/chat/completions"
    messages = [{"role": "system", "content": "You are a helpful assistant"}, {"role": "user", "content": TASK}]
    direct, tokens = [], []
    for _ in range(plan.local_runs):
        started = time.perf_counter()
        answer = requests.post(url, json={"model": "local", "messages": messages}, timeout=120).json()
        direct.append(time.perf_counter() - started)
        tokens.append(answer["usage"]["completion_tokens"])
    service = DaprRun(SERVICE, local_model_env(), "bench-local-model")
    try:
        service.wait_until_ready(SERVICE_URL)
        timed_run()  # warm-up
        runs = [timed_run()[1] for _ in range(plan.local_runs)]
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=plan.local_at_once) as pool:
            at_once = list(pool.map(lambda _: timed_run()[1], range(plan.local_at_once * 2)))
        rate = len(at_once) / (time.perf_counter() - started)
    finally:
        service.stop()
    return LocalModel(direct, tokens, runs, plan.local_at_once, rate, at_once)


def import_seconds() -> float:
    """Seconds for a fresh Python to import dapr_agents, most of the one-shot's wait for its agent."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import dapr_agents"], check=True)
    return time.monotonic() - started


def untuned(config: dict, resources: Path) -> None:
    """The upstream quickstarts' setup: `dapr init`'s config (no retention), no resiliency policies."""
    del config["spec"]["workflow"]
    (resources / "resiliency.yaml").unlink()


def tracing_off(config: dict, resources: Path) -> None:
    config["spec"]["tracing"]["samplingRate"] = "0"


def workflow_state_on_redis(config: dict, resources: Path) -> None:
    """`workflow-state` as it was before PostgreSQL: Redis as the actor state store."""
    component = yaml.safe_load((resources / "workflow-state.yaml").read_text())
    component["spec"].update(type="state.redis", version="v1")
    component["spec"]["metadata"] = [
        {"name": "redisHost", "value": "localhost:6379"},
        {"name": "actorStateStore", "value": "true"},
    ]
    (resources / "workflow-state.yaml").write_text(yaml.safe_dump(component))


VARIANTS = {
    "untuned: `dapr init` config, no resiliency.yaml": untuned,
    "this repository, tracing off (samplingRate 0)": tracing_off,
}


@dataclass(frozen=True)
class StoreFigures:
    """The service with its workflow state in one store."""

    p50_ms: float  # one run at a time, 0 ms LLM
    runs_per_s: float  # the plan's highest concurrency, 0 ms LLM
    model_runs_per_s: float  # store_level(plan) in flight, at the plan's model latency
    cpu_ms: dict[str, float]  # CPU per run by part, over the 0 ms runs in flight
    grown_kib: dict[str, float]  # what PostgreSQL's database and Redis grow by per run, before retention


# Where the workflow state is: this repository's PostgreSQL, or Redis as before it.
STORES: dict[str, Callable[[dict, Path], None] | None] = {
    "PostgreSQL (this repository)": None,
    "Redis, as before": workflow_state_on_redis,
}


def store_level(plan: Plan) -> int:
    return min(64, max(plan.model_levels))


def measure_store(
    change: Callable[[dict, Path], None] | None, env: dict[str, str], llm: LLMServer, plan: Plan, work: Path
) -> StoreFigures:
    """The README's service with its workflow state where `change` puts it, measured at 0 ms LLM
    and at the model's latency."""
    resources = work / "store-resources"
    shutil.rmtree(resources, ignore_errors=True)
    shutil.copytree(ROOT / "resources", resources)
    if change:
        change({}, resources)
    service = DaprRun(SERVICE.replace("./resources", str(resources)), env, "bench-store")
    try:
        service.wait_until_ready(SERVICE_URL)
        timed_run()
        ends, pids = RunEnds(service), stack_pids(service)
        p50 = statistics.median(timed_run()[1] for _ in range(plan.sequential_runs)) * 1000
        level = max(plan.concurrency)
        cpu_before = cpu_by_part(pids)
        rate = statistics.median(throughput(level, runs_at(plan, level), ends) for _ in range(plan.repeats))
        cpu = cpu_ms_per_run(cpu_before, cpu_by_part(pids), plan.repeats * runs_at(plan, level))
        runs = max(10, plan.storage_runs // 10)
        before = {"PostgreSQL": postgres_used_bytes(), "Redis": redis_used_bytes()}
        throughput(8, runs, ends)
        grown = {"PostgreSQL": postgres_used_bytes(), "Redis": redis_used_bytes()}
        llm.state.latency_s = plan.model_latency_s
        level = store_level(plan)
        model_rate = statistics.median(runs_in_flight(level, 2 * level, ends)[0] for _ in range(plan.repeats))
    finally:
        llm.state.latency_s = 0.0
        service.stop()
    kib = {name: (grown[name] - before[name]) / runs / 1024 for name in grown}
    return StoreFigures(p50, rate, model_rate, cpu, kib)


def measure_variant(
    change: Callable[[dict, Path], None], env: dict[str, str], llm: LLMServer, plan: Plan, work: Path
) -> PerTask:
    """The service with this repository's configuration changed by `change`, at 0 ms LLM."""
    config = yaml.safe_load((ROOT / "config" / "dapr-config.yaml").read_text())
    resources = work / "resources"
    shutil.rmtree(resources, ignore_errors=True)
    shutil.copytree(ROOT / "resources", resources)
    change(config, resources)
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    command = SERVICE.replace("./resources", str(resources)).replace(
        "dapr run", f"dapr run --config {work}/config.yaml", 1
    )
    service = DaprRun(command, env, "bench-variant")
    try:
        service.wait_until_ready(SERVICE_URL)
        timed_run()
        return per_task(llm, plan, RunEnds(service))
    finally:
        service.stop()


def status_read_cpu(processes: dict[str, int], reads: int) -> dict[str, float]:
    """CPU per `GET` of an ended run's status URL, in ms, by process."""
    status_url = post_run(TASK)["status_url"]
    wait_for_outcome(status_url, 600, 0.05)
    before = {name: tree_cpu_seconds(pid) for name, pid in processes.items()}
    with requests.Session() as session:
        for _ in range(reads):
            session.get(f"{SERVICE_URL}{status_url}", timeout=60).raise_for_status()
    return {name: (tree_cpu_seconds(pid) - before[name]) * 1000 / reads for name, pid in processes.items()}


@dataclass(frozen=True)
class AfterRetention:
    """What runs leave once every retention and TTL has passed, shortened to `seconds` for the bench."""

    seconds: int
    runs: int
    written: dict[str, tuple[float, float]]  # keys and bytes per run, by what, right after the runs
    left: dict[str, tuple[float, float]]  # the same once the retention and TTLs have passed
    waited_s: float


def after_retention(env: dict[str, str], plan: Plan, work: Path) -> AfterRetention:
    (work / "retention").mkdir()
    config, resources = shortened(work / "retention", RETENTION_S)
    command = SERVICE.replace("./resources", str(resources)).replace("dapr run", f"dapr run --config {config}", 1)
    service = DaprRun(command, env, "bench-retention")
    runs = max(10, plan.storage_runs // 10)
    try:
        service.wait_until_ready(SERVICE_URL)
        instance_ids = [timed_run()[0] for _ in range(runs)]
        written = stored_per_run(instance_ids)
        started = time.monotonic()
        left = written
        while any(keys for keys, _ in left.values()) and time.monotonic() - started < 10 * RETENTION_S:
            time.sleep(2)
            left = stored_per_run(instance_ids)
        return AfterRetention(RETENTION_S, runs, written, left, time.monotonic() - started)
    finally:
        service.stop()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process, its children that have ended, and those still running: PostgreSQL serves
    each connection from a process of its own."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    seconds = sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(OSError):  # it ended while this read
            seconds += tree_cpu_seconds(int(child))
    return seconds


def stack_pids(service: DaprRun) -> dict[str, int]:
    """The processes a run of `service` uses, by the names the tables give them."""
    pid_of = {name: int((ROOT / ".run" / "pids" / f"{name}.pid").read_text()) for name in STACK_PROCESSES}
    return {
        "agent": service.sidecar["appPid"],
        "daprd": service.sidecar["daprdPid"],
        **{STACK_PROCESSES[name]: pid for name, pid in pid_of.items()},
    }


def cpu_by_part(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each process in `pids`; by the kernel's own threads, among them the
    writeback of what the scheduler's etcd and Redis sync to disk; by this benchmark's process, its
    callers and the test LLM; and by the whole machine."""
    parts = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
    parts["kernel"] = kernel_cpu_seconds()
    parts["benchmark"] = cpu_seconds(os.getpid())
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    parts["machine"] = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    return parts


def kernel_cpu_seconds() -> float:
    """CPU the kernel's own threads, kthreadd (pid 2) and its children, have used so far."""
    seconds = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a thread that ended while this read
            pid = int(stat.parent.name)
            if pid == 2 or stat.read_text().rsplit(")", 1)[1].split()[1] == "2":  # its parent's pid
                seconds += cpu_seconds(pid)
    return seconds


def cpu_ms_per_run(before: dict[str, float], after: dict[str, float], runs: int) -> dict[str, float]:
    """CPU per run by part, and "the stack": everything the machine did but this benchmark's process."""
    per_run = {name: (after[name] - before[name]) * 1000 / runs for name in before}
    per_run["the stack"] = per_run["machine"] - per_run["benchmark"]
    return per_run


def redis_used_bytes() -> int:
    return int(redis_cli("info", "memory").split("used_memory:")[1].split()[0])


def postgres_used_bytes() -> int:
    """The size of the workflows' database on disk: its tables, indexes and their free space."""
    return int(psql("SELECT pg_database_size('dapr')")[0][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few iterations, to prove the benchmark runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    args = parser.parse_args()
    plan = SMOKE if args.smoke else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    llm = LLMServer().start()
    env = user_env(llm.base_url)
    service = DaprRun(SERVICE, env, "bench-service")
    rows: list[str] = []
    medians: dict[float, tuple[float, float]] = {}  # floor and service p50 in ms, by LLM latency
    split: dict[str, float] = {}
    cpu_ms: dict[str, float] = {}
    levels: dict[float, list[tuple[int, float]]] = {}
    calls_per_run: dict[float, float] = {}
    try:
        service.wait_until_ready(SERVICE_URL)
        timed_run()  # warm-up: first run loads the agent's code paths
        ends = RunEnds(service)
        pids = stack_pids(service)
        for latency in plan.latencies_s:
            llm.state.latency_s = latency
            floor = floor_latencies(llm, plan.sequential_runs)
            requests_before = len(llm.state.chat_requests())
            timed = [timed_run() for _ in range(plan.sequential_runs)]
            runs = [seconds for _, seconds in timed]
            calls_per_run[latency] = (len(llm.state.chat_requests()) - requests_before) / plan.sequential_runs
            if latency == 0:
                split = time_per_part(timed)
            overhead = statistics.median(runs) - statistics.median(floor)
            medians[latency] = (statistics.median(floor) * 1000, statistics.median(runs) * 1000)
            rows.append(
                f"| {latency * 1000:.0f} ms | {statistics.median(floor) * 1000:.1f} | "
                f"{percentile(runs, 50) * 1000:.0f} / {percentile(runs, 95) * 1000:.0f} / "
                f"{percentile(runs, 99) * 1000:.0f} | {overhead * 1000:.0f} | "
                f"{statistics.median(runs) / statistics.median(floor):.1f}x |"
            )
            cpu_before = cpu_by_part(pids)
            levels[latency] = [
                (level, statistics.median([throughput(level, runs_at(plan, level), ends) for _ in range(plan.repeats)]))
                for level in plan.concurrency
            ]
            if latency == 0:
                runs_done = plan.repeats * sum(runs_at(plan, level) for level in plan.concurrency)
                cpu_ms = cpu_ms_per_run(cpu_before, cpu_by_part(pids), runs_done)
        readers = {name: pids[name] for name in ("agent", "daprd", "PostgreSQL", "Redis")}
        status_read_ms = status_read_cpu(readers, 10 * plan.sequential_runs)
        memory = {
            "agent (python)": peak_rss_mb(service.sidecar["appPid"]),
            "daprd": peak_rss_mb(service.sidecar["daprdPid"]),
        }
        llm.state.latency_s = 0.0
        used_before, keys_before = redis_used_bytes(), int(redis_cli("dbsize"))
        database_before = postgres_used_bytes()
        instance_ids = [timed_run()[0] for _ in range(plan.storage_runs)]
        bytes_per_run = (redis_used_bytes() - used_before) / plan.storage_runs
        keys_per_run = (int(redis_cli("dbsize")) - keys_before) / plan.storage_runs
        database_per_run = (postgres_used_bytes() - database_before) / plan.storage_runs
        stored = stored_per_run(instance_ids)
        top = max(plan.concurrency)
        one_call = {
            latency: PerTask(medians[latency][1], dict(levels[latency])[top], calls_per_run[latency])
            for latency in plan.latencies_s
        }
        side_by_side = {"this repository": one_call[0.0]}
    finally:
        service.stop()
    llm.state.latency_s = 0.0
    with tempfile.TemporaryDirectory() as work:
        before_sizing = Path(work) / "before_sizing.py"
        before_sizing.write_text(BEFORE_SIZING)
        model = {
            "before: the SDK's worker, a Dapr client per call": at_model_latency(
                SERVICE.replace("python durable_agent_service.py", f"python {before_sizing}"),
                "bench-before-sizing",
                {**env, "PYTHONPATH": str(ROOT)},
                llm,
                plan,
            ),
            "after: this repository": at_model_latency(SERVICE, "bench-model-latency", env, llm, plan),
        }
        for name, change in VARIANTS.items():
            side_by_side[name] = measure_variant(change, env, llm, plan, Path(work))
        stores = {name: measure_store(change, env, llm, plan, Path(work)) for name, change in STORES.items()}
        summarizing, summarizing_split = measure_summarizing(env, llm, plan, Path(work))
        retention = after_retention(env, plan, Path(work))
    phases = [one_shot_phases(env, llm) for _ in range(plan.one_shots)]
    imports = [import_seconds() for _ in range(plan.one_shots)]
    llm.stop()
    local = measure_local_model(plan)
    write_results(
        args.out,
        plan,
        rows,
        medians,
        split,
        cpu_ms,
        status_read_ms,
        levels,
        side_by_side,
        memory,
        bytes_per_run,
        keys_per_run,
        database_per_run,
        stored,
        phases,
        imports,
        {"before: summarizing each run for memory": summarizing, "after: this repository": one_call},
        summarizing_split,
        model,
        retention,
        stores,
        local,
    )


def left_of(stored: dict[str, tuple[float, float]]) -> str:
    return ", ".join(f"{name} {count:.1f} {UNITS[name]}, {size:.0f} bytes" for name, (count, size) in stored.items())


def write_results(
    out: Path,
    plan: Plan,
    rows: list[str],
    medians: dict[float, tuple[float, float]],
    split: dict[str, float],
    cpu_ms: dict[str, float],
    status_read_ms: dict[str, float],
    levels: dict[float, list[tuple[int, float]]],
    side_by_side: dict[str, PerTask],
    memory: dict[str, float],
    bytes_per_run: float,
    keys_per_run: float,
    database_per_run: float,
    stored: dict[str, tuple[float, float]],
    phases: list[dict[str, float]],
    imports: list[float],
    before_after: dict[str, dict[float, PerTask]],
    summarizing_split: dict[str, float],
    model: dict[str, list[Level]],
    retention: AfterRetention,
    stores: dict[str, StoreFigures],
    local: LocalModel,
) -> None:
    versions = dict(
        line.split("=", 1) for line in (ROOT / "versions.env").read_text().splitlines() if line[:1].isupper()
    )
    throughput_rows = [
        f"| {latency * 1000:.0f} ms | {level} | {rate:.1f} |"
        for latency, pairs in levels.items()
        for level, rate in pairs
    ]
    kept = {
        "workflow state": ("workflow state (history, metadata)", "24 h after it completes (`config/dapr-config.yaml`)"),
        "agent entries": (
            "the run's conversation (agent entry)",
            "a week after its last write (`resources/agent-workflow.yaml`)",
        ),
    }
    storage_rows = [
        f"| {kept[name][0]} | {keys:.1f} | {size / 1024:.1f} | {kept[name][1]} |"
        for name, (keys, size) in stored.items()
    ]
    ours = side_by_side["this repository"]
    side_rows = [
        f"| {name} | {figures.p50_ms:.0f} ({figures.p50_ms / ours.p50_ms:.2f}x) | "
        f"{figures.runs_per_s:.1f} ({figures.runs_per_s / ours.runs_per_s:.2f}x) |"
        for name, figures in side_by_side.items()
    ]
    activities = [ms for name, ms in split.items() if name.startswith("activity")]
    first_llm = statistics.median(p["first LLM request"] for p in phases)
    overhead = medians[0.0][1] - medians[0.0][0]
    top = max(plan.concurrency)
    goals = [
        ("overhead ≤ 50 ms p50 per run, 0 ms LLM", f"{overhead:.0f} ms", overhead <= 50),
        (f"≥ 50 runs/s with {top} in flight, 0 ms LLM", f"{ours.runs_per_s:.1f}", ours.runs_per_s >= 50),
        ("one-shot to first LLM request ≤ 3 s", f"{first_llm:.2f} s", first_llm <= 3),
    ]
    if 0.5 in medians:
        ratio = medians[0.5][1] / medians[0.5][0]
        goals.insert(2, ("within 10% of the floor at 500 ms LLM", f"{ratio:.2f}x", ratio <= 1.1))
    cores = os.cpu_count() or 1
    cpu_of_service = cpu_ms.get("agent", 0) + cpu_ms.get("daprd", 0)
    goals += [
        ("CPU per run, agent + daprd, ≤ 60 ms at 0 ms LLM", f"{cpu_of_service:.0f} ms", cpu_of_service <= 60),
        ("overhead ≤ 80 ms p50 per run, 0 ms LLM", f"{overhead:.0f} ms", overhead <= 80),
    ]
    after_levels = {level.in_flight: level for level in model["after: this repository"]}
    if 64 in after_levels:
        seen = after_levels[64].llm_at_once
        goal = f"LLM calls at once, 64 in flight, {plan.model_latency_s:g} s LLM, ≥ 48"
        goals.append((goal, str(seen), seen >= 48))
    if 256 in after_levels and not after_levels[256].failed:
        busiest = after_levels[256]
        allowed = min(256 / plan.model_latency_s, cores * 1000 / busiest.cpu_ms["the stack"])
        share = busiest.runs_per_s / allowed
        goals.append(
            (
                f"runs/s, 256 in flight, ≥ 80% of what {cores} cores allow at the stack's CPU per run ({allowed:.1f})",
                f"{busiest.runs_per_s:.1f} ({share:.0%})",
                share >= 0.8,
            )
        )
    postgres, redis = stores.values()
    model_level = f"{store_level(plan)} in flight, {plan.model_latency_s:g} s LLM"
    for what, ours_, theirs in (
        (f"{top} in flight, 0 ms LLM", postgres.runs_per_s, redis.runs_per_s),
        (model_level, postgres.model_runs_per_s, redis.model_runs_per_s),
    ):
        goal = f"runs/s on PostgreSQL within 10% of Redis, {what}"
        goals.append((goal, f"{ours_ / theirs:.0%}", ours_ >= 0.9 * theirs))
    goal_rows = [f"| {goal} | {shown} | {'yes' if met else 'no'} |" for goal, shown, met in goals]
    store_parts = ("agent", "daprd", "scheduler", "PostgreSQL", "Redis", "the stack")
    store_header = (
        f"| workflow state in | p50 ms, 0 ms LLM | runs/s, {top} in flight, 0 ms LLM | runs/s, {model_level} "
        f"| CPU per run ms, {' / '.join(store_parts)} | grows per run KiB, PostgreSQL / Redis |\n" + "| --- " * 6 + "|"
    )
    store_rows = [
        f"| {name} | {figures.p50_ms:.0f} | {figures.runs_per_s:.1f} | {figures.model_runs_per_s:.1f} | "
        + " / ".join(f"{figures.cpu_ms[part]:.0f}" for part in store_parts)
        + f" | {figures.grown_kib['PostgreSQL']:.1f} / {figures.grown_kib['Redis']:.1f} |"
        for name, figures in stores.items()
    ]
    model_rows = [
        f"| {name} | {level.in_flight} | "
        + (
            f"{level.failed} | | {level.llm_at_once} | | |"
            if level.failed
            else f"{level.runs_per_s:.1f} | {level.p50_s:.2f} / {level.p95_s:.2f} | {level.llm_at_once} | "
            + " / ".join(f"{level.cpu_ms[part]:.0f}" for part in ("agent", "daprd", "scheduler", "the stack"))
            + f" | {level.busy:.0%} |"
        )
        + f" agent {level.peak_rss_mb['agent']:.0f}, daprd {level.peak_rss_mb['daprd']:.0f} |"
        for name, levels in model.items()
        for level in levels
    ]
    model_header = (
        "| service | in flight | runs/s | p50 / p95 s | LLM calls at once "
        "| CPU per run ms, agent / daprd / scheduler / the stack | cores busy | peak RSS MB |\n" + "| --- " * 8 + "|"
    )
    turns = split.get("workflow turns between activities", 0)
    top_level = max(plan.concurrency)
    activities_of = {name: len(activities) for name in before_after}
    activities_of["before: summarizing each run for memory"] = sum(
        1 for name in summarizing_split if name.startswith("activity")
    )
    before_after_header = "".join(
        f" p50 ms, {lat * 1000:.0f} ms LLM | runs/s, {top_level} in flight, {lat * 1000:.0f} ms LLM |"
        for lat in plan.latencies_s
    )
    before_after_rows = [
        f"| {name} | {figures[plan.latencies_s[0]].llm_calls:.1f} | {activities_of[name]} |"
        + "".join(f" {figures[lat].p50_ms:.0f} | {figures[lat].runs_per_s:.1f} |" for lat in plan.latencies_s)
        for name, figures in before_after.items()
    ]
    before, after = before_after.values()
    summary_step = summarizing_split.get("activity summarize", 0)
    summarizing_turns = summarizing_split.get("workflow turns between activities", 0)
    cpu_total = cpu_ms["the stack"]
    by_process = ", ".join(f"{name} {cpu_ms[name]:.0f} ms" for name in PARTS_SHOWN)
    budget = (os.cpu_count() or 1) * 1000 / 50
    split_rows = [f"| {name} | {ms:.0f} |" for name, ms in split.items()]
    phase_rows = [f"| {name} | {spread([p[name] for p in phases])} |" for name in ONE_SHOT_PHASES]
    (out / "RESULTS.md").write_text(
        f"""# What durability costs

Measured by `make bench`{" (smoke run)" if plan.storage_runs < 100 else ""} on {os.cpu_count()} cores,
{platform.machine()}, Python {platform.python_version()}, Dapr runtime {versions["DAPR_RUNTIME_VERSION"]},
dapr-agents 1.0.9, against the test LLM answering after a fixed latency. Every run of the agent makes one
LLM call.

## One task, one at a time (ms)

{plan.sequential_runs} runs each. Floor: the openai SDK calling the same LLM directly, no Dapr.
Service: `POST /run`, then the status URL polled every 10 ms until COMPLETED.

| LLM latency | floor p50 | service p50 / p95 / p99 | overhead p50 | ratio |
| --- | --- | --- | --- | --- |
{chr(10).join(rows)}

## Where a run's time goes (0 ms LLM)

Median of the {plan.sequential_runs} runs above, in ms, from each run's workflow history
(`scripts/workflow_history.py` shows one). An activity's time runs from the workflow scheduling it
to Dapr recording its result: dispatch to the agent, the agent's Python, and the way back.
"Outside the workflow" is `POST /run`, starting the workflow and the 10 ms status polls.

| part | ms |
| --- | --- |
{chr(10).join(split_rows)}

CPU used per run, over all the 0 ms runs under "Completed runs per second" below:
{by_process};
{cpu_total:.0f} ms in all on the machine ("the stack": the kernel's threads write to disk what the scheduler's
etcd, PostgreSQL and Redis sync), not counting this benchmark's own process, its callers and the test LLM
({cpu_ms["benchmark"]:.0f} ms). So {os.cpu_count()} cores can complete at most about
{(os.cpu_count() or 1) * 1000 / cpu_total:.0f} runs/s, whatever the concurrency (fewer here: the benchmark
uses the same cores). The scheduler's share is the workflow's reminders: ten jobs a run, one to start it,
two per activity and one that purges it a day after it completes, each written to etcd and deleted once it
fired. Those runs' ends are
awaited through the sidecar's workflow API, not polled. A client that polls pays per read of the status URL:
{", ".join(f"{name} {ms:.1f} ms" for name, ms in status_read_ms.items())}
(over {10 * plan.sequential_runs} reads of an ended run), so one poll a second through a 2 s LLM call
costs about two such reads per run.

## Completed runs per second

Runs at each level: {", ".join(f"{runs_at(plan, level)} with {level} in flight" for level in plan.concurrency)};
median of {plan.repeats} repetitions.

| LLM latency | runs in flight | runs/s |
| --- | --- | --- |
{chr(10).join(throughput_rows)}

## At a real model's latency

The test LLM answers each call after {plan.model_latency_s:g} s, as a real model takes seconds. At each
level, twice as many runs as are in flight, topped up once a second as runs complete; a run's time is from
`POST /run` to the completion Dapr records. "Before" is this repository's service as it was, in this
same run: the Python SDK's workflow worker of cpu_count + 4 threads ({cores + 4} here), each LLM call
holding one for its whole wait, and a new Dapr client for every state operation and LLM call.
"After" sizes the worker to the sidecar's bound (`config/dapr-config.yaml`, 256) and shares one
client (`service_runner/thread_pools.py`, `service_runner/dapr_client.py`). CPU per run: "the stack" is all
the machine did, the agent, daprd and scheduler among it, but this benchmark's own process; "cores busy" is
the machine's share meanwhile, the benchmark's process included.

{model_header}
{chr(10).join(model_rows)}

## Before and after: one LLM call per task

dapr-agents summarizes every run for the agent's long-term memory with a second LLM call, unless the
agent's memory is off; nothing here reads that summary back, so both scripts set `agent.memory = None`.
"Before" is `durable_agent_service.py` without that line, measured in this same run. LLM calls per run
are the test LLM's count over the {plan.sequential_runs} runs one at a time.

| service | LLM calls per run | activities per run |{before_after_header}
| --- | --- | --- |{" --- | --- |" * len(plan.latencies_s)}
{chr(10).join(before_after_rows)}

At 0 ms LLM the summary costs one activity ({summary_step:.0f} ms median in the "before" runs'
histories) and one more workflow turn (turns {summarizing_turns:.0f} ms in all, against {turns:.0f}); the p50s
differ by {before[0.0].p50_ms - after[0.0].p50_ms:.0f} ms in this run. This p50 has moved by 40 ms and more
between whole runs of `make bench` on this machine, so an A/B of a few runs each cannot tell a step
of this size from noise; its CPU shows more steadily, in throughput with runs in flight. With a real
LLM the second call costs a whole LLM latency, and tokens.

## Side by side (0 ms LLM)

The same service, one configuration changed at a time, each measured as above in this same run;
in brackets, the ratio to this repository's configuration.

| configuration | p50 ms, one at a time | runs/s, {max(plan.concurrency)} in flight |
| --- | --- | --- |
{chr(10).join(side_rows)}

## The workflows' store: PostgreSQL against Redis

The README's service with `workflow-state` on PostgreSQL, as shipped, and on Redis, as it was before
(`state.redis` as the actor state store), each measured in this same run: p50 of {plan.sequential_runs}
runs one at a time and runs/s with {top} in flight at 0 ms LLM, with the CPU per run of each part over
those runs; runs/s with {store_level(plan)} in flight at {plan.model_latency_s:g} s LLM (each runs/s the median of
{plan.repeats}: one such figure moves by 10% from one try to the next); and what each store
grows by per run before retention, over {max(10, plan.storage_runs // 10)} runs (PostgreSQL's
`pg_database_size`, in whole pages; Redis's `used_memory`, the agent's entry among it in both).

{store_header}
{chr(10).join(store_rows)}

## The one-shot, seconds from `dapr run` to...

Median of {plan.one_shots} (min-max). The agent is ready when its workflow worker has connected to
the sidecar (`workflows.connectedWorkers` in the sidecar's metadata).

| phase | seconds |
| --- | --- |
{chr(10).join(phase_rows)}

`dapr run` starts the app once the sidecar is up, so the agent's wait is mostly Python starting:
`python -c "import dapr_agents"` alone takes {spread(imports)} s.

{local.section()}
## Against the goals

| goal | measured | reached |
| --- | --- | --- |
{chr(10).join(goal_rows)}

What holds them back, from the figures above. With a 0 ms LLM, the agent's {len(activities)} activities
take {sum(activities):.0f} ms of a run and the workflow's turns between them {turns:.0f} ms: each step is a
round trip between daprd and the agent with state writes, and no configuration here removes a step.
Throughput is bound by CPU: a run uses {cpu_total:.0f} ms of the machine, {cpu_ms["agent"]:.0f} ms of it in the
agent's Python and {cpu_ms["scheduler"]:.0f} ms in the scheduler, where 50 runs/s on {os.cpu_count()} cores would
allow {budget:.0f} ms in all. Switching tracing
off or dropping this repository's configuration changes the figures by the ratios in "Side by side".
The one-shot's agent is ready only once Python has imported dapr_agents, which takes
{statistics.median(imports):.1f} s on its own: it imports the SDK of every LLM provider it supports.

## Memory and storage

Peak RSS after the load above: {", ".join(f"{name} {mb:.0f} MB" for name, mb in memory.items())}.

Per completed run ({plan.storage_runs} runs), PostgreSQL's database grows by {database_per_run / 1024:.1f} KiB
on disk (`pg_database_size`, which grows in whole pages) and Redis by {bytes_per_run / 1024:.1f} KiB and
{keys_per_run:.1f} keys (`used_memory` and `dbsize`). Per run, the workflow state's rows in PostgreSQL
(`pg_column_size` of key and value) and the agent's entry in Redis (`MEMORY USAGE`):

| what | rows or keys | KiB | kept |
| --- | --- | --- | --- |
{chr(10).join(storage_rows)}

So a day after it completes a run still holds {stored["agent entries"][1] / 1024:.1f} KiB, its entry, and a week after
its last step nothing: the entry's store sets a TTL on every write, while the workflow state's store has none
(it would expire a waiting run's steps) and is purged by the retention policy.

After retention, measured: the same service with every retention and TTL shortened to {retention.seconds} s,
{retention.runs} runs. Right after them, per run: {left_of(retention.written)}. Once those {retention.seconds} s
had passed (checked every 2 s, {retention.waited_s:.0f} s after the last run): {left_of(retention.left)}.

![latency and phases](latency.png)
"""
    )
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4))
    for latency, pairs in levels.items():
        left.plot(
            [lv for lv, _ in pairs], [rate for _, rate in pairs], marker="o", label=f"LLM {latency * 1000:.0f} ms"
        )
    left.set(xlabel="runs in flight", ylabel="completed runs/s", title="Throughput vs concurrency")
    left.set_xscale("log", base=2)
    left.set_xticks(list(plan.concurrency), labels=[str(level) for level in plan.concurrency])
    left.minorticks_off()
    left.legend()
    offset = 0.0
    for name, ms in split.items():
        middle.barh(["service run"], [ms], left=[offset], label=name)
        offset += ms
    middle.set(xlabel="ms (median, 0 ms LLM)", title="Where one service run's time goes")
    middle.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2)
    previous = 0.0
    for name in ONE_SHOT_PHASES:
        reached = statistics.median(p[name] for p in phases)
        right.barh(["one-shot"], [reached - previous], left=[previous], label=f"to {name}")
        previous = reached
    right.set(xlabel="seconds", title="Where the one-shot's time goes")
    right.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(out / "latency.png", dpi=100)


if __name__ == "__main__":
    main()
