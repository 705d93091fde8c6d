"""The workflows' store fails with runs in flight: PostgreSQL killed, PostgreSQL unreachable, a replica
that stops answering while its runs are mid-call and comes back after another took them over. Every
run completes once, each run's entry holds one turn, and no sidecar reads back torn state."""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    SERVICE_URL,
    DaprRun,
    calls_for,
    post_run,
    stack_pid,
    stack_up,
    wait_for,
    wait_for_outcome,
)
from tests.llm_server import HAIKU, LLMServer
from tests.test_load import REPLICA

RUNS = 8
# What a sidecar logs when it reads a workflow whose step was saved in part (dapr 1.18's wfengine).
TORN_STATE = ("partial save", "missing from state store")


def postgres_processes() -> list[int]:
    """The postmaster `make up` started, then every process it forked (its backends and workers)."""
    postmaster = stack_pid("postgres")
    return [postmaster, *map(int, Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split())]


@pytest.fixture
def runs_mid_call(llm: LLMServer) -> Iterator[Callable[[str], tuple[list[str], list[str], list[threading.Event]]]]:
    """Starts RUNS runs whose LLM calls the stand-in holds; gives their tasks, instance ids and the
    events that release the calls. Whatever a story left held is released at its end."""
    held: list[threading.Event] = []

    def start(about: str, service_url: str = SERVICE_URL) -> tuple[list[str], list[str], list[threading.Event]]:
        batch = uuid.uuid4().hex[:8]
        tasks = [f"Write haiku number {n} about {about} ({batch})." for n in range(RUNS)]
        releases = [llm.state.hold_next() for _ in tasks]
        held.extend(releases)
        instance_ids = [post_run(task, service_url)["instance_id"] for task in tasks]
        wait_for(lambda: all(calls_for(llm, task) >= 1 for task in tasks), 60, "every run's LLM call")
        return tasks, instance_ids, releases

    yield start
    for release in held:
        release.set()


def assert_each_completed_once(
    service: DaprRun, llm: LLMServer, tasks: list[str], instance_ids: list[str], service_url: str = SERVICE_URL
) -> collections.Counter[int]:
    """Every run COMPLETED with the answer, its entry holding its one turn; the LLM calls per task."""
    outcomes = [wait_for_outcome(f"/agent/instances/{i}", 180, 0.5, service_url) for i in instance_ids]
    assert collections.Counter(o["runtime_status"] for o in outcomes) == {"COMPLETED": RUNS}, outcomes
    for task, instance_id in zip(tasks, instance_ids, strict=True):
        entry = service.get_state("agent-workflow", f"assistant:_workflow_{instance_id}")
        assert [(m["role"], m["content"]) for m in entry["messages"]] == [("user", task), ("assistant", HAIKU)]
    return collections.Counter(calls_for(llm, task) for task in tasks)


def torn_state_lines(*runs: DaprRun) -> list[str]:
    return [line for run in runs for line in run.log().splitlines() if any(t in line for t in TORN_STATE)]


def test_postgresql_killed_with_runs_mid_call_and_restarted_loses_none_of_them(
    llm: LLMServer, start_service: Callable[[], DaprRun], runs_mid_call: Callable[..., tuple]
) -> None:
    service = start_service()
    tasks, instance_ids, releases = runs_mid_call("a database crash")

    killed = postgres_processes()
    for pid in killed:  # as a power cut would: no shutdown, the WAL replayed on start
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in killed), 30, "PostgreSQL's processes to go")
    stack_up()  # PostgreSQL recovers from its write-ahead log
    for release in releases:
        release.set()

    calls = assert_each_completed_once(service, llm, tasks, instance_ids)
    print(f"\nPostgreSQL killed with {RUNS} runs mid-call: tasks by LLM calls {dict(calls)}")
    assert calls == {1: RUNS}, "a run called the LLM again"
    assert torn_state_lines(service) == []


def test_postgresql_unreachable_for_20_s_with_runs_mid_call_loses_none_of_them(
    llm: LLMServer, start_service: Callable[[], DaprRun], runs_mid_call: Callable[..., tuple]
) -> None:
    service = start_service()
    tasks, instance_ids, releases = runs_mid_call("a database that hangs")

    stopped = postgres_processes()
    for pid in stopped:  # every connection, old or new, goes unanswered
        os.kill(pid, signal.SIGSTOP)
    try:
        for release in releases:  # the calls answer; saving their results waits on the store
            release.set()
        time.sleep(20)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)

    calls = assert_each_completed_once(service, llm, tasks, instance_ids)
    print(f"\nPostgreSQL unreachable 20 s with {RUNS} runs mid-call: tasks by LLM calls {dict(calls)}")
    assert set(calls) <= {1, 2}, calls
    assert torn_state_lines(service) == []


def test_a_replica_that_stops_answering_mid_call_and_comes_back_after_failover_leaves_no_torn_state(
    llm: LLMServer, start_service: Callable[[], DaprRun], dapr_env: dict[str, str], runs_mid_call: Callable[..., tuple]
) -> None:
    """Frozen past placement's failover, replica 1 comes back still holding its runs' LLM answers:
    a stale owner. Its writes are refused whole (the metadata's ETag no longer matches)."""
    service = start_service()  # the README's command is replica 1
    second = DaprRun(REPLICA, dapr_env, "store-replica-2")
    try:
        second.wait_until_ready("http://localhost:8002")
        tasks, instance_ids, releases = runs_mid_call("a frozen replica")
        frozen = [service.sidecar["daprdPid"], service.sidecar["appPid"]]
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            for release in releases:
                release.set()
            time.sleep(30)  # placement's failover takes a few seconds; replica 2 takes the runs over
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)

        calls = assert_each_completed_once(second, llm, tasks, instance_ids, "http://localhost:8002")
        print(f"\na replica frozen 30 s with {RUNS} runs mid-call: tasks by LLM calls {dict(calls)}")
        assert set(calls) <= {1, 2}, calls
        assert torn_state_lines(service, second) == []
    finally:
        second.stop()
