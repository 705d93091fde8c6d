"""Load and scale-out: every run completes once, under 200 concurrent requests or across a lost replica."""

from __future__ import annotations

import collections
import json
import os
import signal
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from tests.conftest import (
    SERVICE_URL,
    DaprRun,
    answer_of,
    calls_for,
    page_command,
    post_run,
    redis_cli,
    wait_for,
    wait_for_outcome,
)
from tests.llm_server import HAIKU, LLMServer

RUNS = 200

REPLICA = page_command("dapr run --app-id durable-agent-service", containing="-p 8002")
# daprd 1.18.2's panic when a run it took over completes: a nil runtime state on the retention path.
RETENTION_PANIC = "orchestrator.(*orchestrator).handleRetention"


def test_200_concurrent_runs_all_complete_once(service: DaprRun, llm: LLMServer, record_property) -> None:
    llm.state.latency_s = 0.2
    batch = uuid.uuid4().hex[:8]  # runs left over from an earlier session resume too: keep ours apart
    tasks = [f"Write haiku number {n} about load ({batch})." for n in range(RUNS)]
    started = time.monotonic()

    def run(task: str) -> tuple[str, float]:
        posted = time.monotonic()
        outcome = wait_for_outcome(post_run(task)["status_url"], timeout=600, interval=1)
        return outcome["runtime_status"], time.monotonic() - posted

    with ThreadPoolExecutor(max_workers=RUNS) as pool:
        results = list(pool.map(run, tasks))

    elapsed = time.monotonic() - started
    statuses = [status for status, _ in results]
    assert statuses.count("COMPLETED") == RUNS, statuses
    calls = collections.Counter(calls_for(llm, task) for task in tasks)
    assert calls == {1: RUNS}, f"tasks by number of LLM calls: {dict(calls)}"
    latencies = sorted(latency for _, latency in results)
    figures = {
        "runs_per_s": round(RUNS / elapsed, 1),
        "p50_s": round(statistics.median(latencies), 2),
        "p95_s": round(latencies[int(RUNS * 0.95) - 1], 2),
        "elapsed_s": round(elapsed, 1),
    }
    for name, value in figures.items():
        record_property(name, value)
    print(f"\nload: {figures}")


def test_two_replicas_and_one_killed_midway_the_survivor_completes_all_100_runs(
    service: DaprRun, llm: LLMServer, dapr_env: dict[str, str]
) -> None:
    """Same app id, own ports, shared placement, scheduler and Redis: docs/production.md's scale-out."""
    first = service  # the README's service command is replica 1
    survivors = [DaprRun(REPLICA, dapr_env, "replica-2")]  # and its restart, if Dapr's panic calls for one
    survivor_url = "http://localhost:8002"
    try:
        survivors[0].wait_until_ready(survivor_url)
        llm.state.latency_s = 0.2
        batch = uuid.uuid4().hex[:8]
        tasks = [f"Write haiku number {n} about replicas ({batch})." for n in range(100)]
        with ThreadPoolExecutor(max_workers=20) as pool:  # half the runs through each replica
            runs = list(pool.map(lambda n: post_run(tasks[n], (SERVICE_URL, survivor_url)[n % 2]), range(100)))

        wait_for(lambda: len(llm.state.chat_requests()) >= 50, 60, "about a quarter of the LLM calls")
        os.kill(first.sidecar["appPid"], signal.SIGKILL)
        os.kill(first.sidecar["daprdPid"], signal.SIGKILL)

        outcomes: list[dict[str, Any]] = []
        while not outcomes:
            try:
                with ThreadPoolExecutor(max_workers=20) as pool:
                    outcomes = list(
                        pool.map(lambda r: wait_for_outcome(r["status_url"], 300, 1, service_url=survivor_url), runs)
                    )
            except requests.ConnectionError:
                # Dapr 1.18.2's sidecar can panic as it takes over the runs (docs/production.md, "Known
                # limits"); a supervisor starts it again, and the runs go on from their saved state.
                if len(survivors) > 1 or RETENTION_PANIC not in survivors[-1].log():
                    raise
                survivors[-1].stop()
                survivors.append(DaprRun(REPLICA, dapr_env, "replica-2-restarted"))
                survivors[-1].wait_until_ready(survivor_url)
    finally:
        for survivor in survivors:
            survivor.stop()

    statuses = collections.Counter(outcome["runtime_status"] for outcome in outcomes)
    assert statuses == {"COMPLETED": 100}, statuses
    assert [json.loads(o["serialized_input"])["task"] for o in outcomes] == tasks
    assert {answer_of(outcome) for outcome in outcomes} == {HAIKU}
    # None ran twice: at most the LLM call interrupted by the kill was made again, and each run's
    # conversation holds its task and one answer, or, for a run whose call was made again after the
    # first one's answer was saved, that turn twice (docs/production.md, "Known limits").
    calls = [calls_for(llm, task) for task in tasks]
    turns_twice = 0
    for run, task, made in zip(runs, tasks, calls, strict=True):
        key = f"durable-agent-service||assistant:_workflow_{run['instance_id']}"
        messages = json.loads(redis_cli("hget", key, "data"))["messages"]
        turns = len(messages) // 2
        assert [m["role"] for m in messages] == ["user", "assistant"] * turns and 1 <= turns <= made, messages
        assert [m["content"] for m in messages[::2]] == [task] * turns, messages
        turns_twice += turns == 2
    assert set(calls) <= {1, 2}, f"tasks by number of LLM calls: {collections.Counter(calls)}"
    print(
        f"\nreplicas: {statuses}, tasks by LLM calls {dict(collections.Counter(calls))},"
        f" turn saved twice {turns_twice}, survivor restarted after Dapr's panic {len(survivors) - 1} time(s)"
    )
