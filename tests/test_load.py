"""Load: 200 concurrent POST /run with a 200 ms LLM all complete, none lost, none run twice."""

from __future__ import annotations

import collections
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import DaprRun, calls_for, post_run, wait_for_outcome
from tests.llm_server import LLMServer

RUNS = 200


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
