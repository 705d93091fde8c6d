"""A task on a schedule: docs/schedules.md's service, its ticks sent by Dapr's scheduler.

Each story writes a schedule file of its own, ticking `@every 5s`, and starts the page's command with
AGENT_SCHEDULES naming it. Ticks are counted from the sidecars' metrics, runs from GET /schedules and
the runs' status, LLM calls from the stand-in. Every job a story made is deleted at its end, so no
tick reaches a later story.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.conftest import (
    ROOT,
    SERVICE_URL,
    WORKFLOW_SPAN,
    ZIPKIN,
    DaprRun,
    calls_for,
    metrics,
    page_command,
    redis_cli,
    wait_for,
    wait_for_outcome,
)
from tests.llm_server import LLMServer

SCHEDULED = page_command("AGENT_SCHEDULES=schedules.yaml dapr run --app-id durable-agent-service")
# The page names its file in front of the command; a story names a file of its own in the environment.
SCHEDULED_SERVICE = SCHEDULED.removeprefix("AGENT_SCHEDULES=schedules.yaml ")
LIST = page_command("curl http://localhost:8001/schedules")
SECOND_REPLICA = page_command("dapr run --app-id durable-agent-service", containing="-p 8002")
SECOND_URL = "http://localhost:8002"
PERIOD_S = 5


def every(seconds: int, about: str) -> dict[str, str]:
    """A schedule of its own for a story: a name and a task no other story uses."""
    name = f"haiku-{about}-{uuid.uuid4().hex[:6]}"
    return {"name": name, "schedule": f"@every {seconds}s", "task": f"Write a haiku about {about} ({name})."}


@pytest.fixture
def scheduled(dapr_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., DaprRun]]:
    """Starts the page's command with a schedule file of the story's; at the end deletes every job
    the story scheduled, through a sidecar still up, and stops every service it started."""
    started: list[DaprRun] = []
    names: set[str] = set()

    def start(schedules: list[dict[str, str]], command: str = SCHEDULED_SERVICE, url: str = SERVICE_URL) -> DaprRun:
        path = tmp_path / f"schedules-{len(started)}.yaml"
        path.write_text(yaml.safe_dump({"schedules": schedules}))
        names.update(s["name"] for s in schedules)
        started.append(DaprRun(command, {**dapr_env, "AGENT_SCHEDULES": str(path)}, "scheduled"))
        started[-1].wait_until_ready(url)
        return started[-1]

    yield start
    alive = next((run for run in started if run.process.poll() is None and run.sidecar), None)
    for name in names if alive else ():
        requests.delete(alive.sidecar_url(f"/v1.0/jobs/{name}"), timeout=10)
    for run in started:
        run.stop()


def listed(url: str, name: str) -> list[dict[str, Any]]:
    """The runs GET /schedules lists for the schedule `name`, oldest first."""
    answer = requests.get(f"{url}/schedules", timeout=30)
    assert answer.status_code == 200, answer.text
    (schedule,) = [s for s in answer.json() if s["name"] == name]
    return schedule["runs"][::-1]


def runs_of(url: str, name: str, count: int, timeout: float, since: float = 0) -> list[dict[str, Any]]:
    """The schedule's runs once it lists `count` of ticks after `since`, each ended, oldest first."""

    def enough() -> list[dict[str, Any]] | None:
        runs = [r for r in listed(url, name) if datetime.fromisoformat(r["tick"]).timestamp() > since]
        return runs if len(runs) >= count and all(r["runtime_status"] != "RUNNING" for r in runs) else None

    return wait_for(enough, timeout, f"{url} to list {count} ended runs of {name}", 1)


def stop_ticks(run: DaprRun, name: str) -> None:
    """Delete the schedule's job, so that the runs can be counted with no tick coming."""
    answer = requests.delete(run.sidecar_url(f"/v1.0/jobs/{name}"), timeout=10)
    assert answer.status_code in (200, 204), answer.text
    time.sleep(2)  # a tick already sent ends its start


def ticks_seen(run: DaprRun) -> int:
    """The ticks the sidecar has handed its app, from its metrics (`--metrics-port`)."""
    port = int(run.command.split("--metrics-port ")[1].split()[0])
    counts = re.findall(r"^dapr_component_job_(?:success|failure)_count\{[^}]*\} (\S+)$", metrics(port), re.MULTILINE)
    return sum(int(float(count)) for count in counts)


def workflow_traced(instance_id: str) -> bool:
    """The sidecar's span of the run's workflow is in Zipkin. (`trace_of_run` also waits for the
    agent's own spans, which a service without the OTEL_ variables sends none of.)"""
    query = {"annotationQuery": f"durabletask.task.instance_id={instance_id}", "limit": 10}
    traces = requests.get(f"{ZIPKIN}/traces", params=query, timeout=5).json()
    return any(span["name"] == WORKFLOW_SPAN for trace in traces for span in trace)


def tick_times(runs: list[dict[str, Any]]) -> list[float]:
    return [datetime.fromisoformat(r["tick"]).timestamp() for r in runs]


def assert_one_run_per_tick(llm: LLMServer, url: str, schedule: dict[str, str], runs: list[dict[str, Any]]) -> None:
    """Each run completed, on its own tick of the schedule, with its one LLM call and nothing more."""
    ticks = tick_times(runs)
    assert len(set(ticks)) == len(ticks) and all(t % PERIOD_S == 0 for t in ticks), ticks
    for run in runs:
        assert run["runtime_status"] == "COMPLETED", run
        assert wait_for_outcome(run["status_url"], 30, service_url=url)["runtime_status"] == "COMPLETED"
    assert calls_for(llm, schedule["task"]) == len(runs)


def test_each_tick_runs_the_task_once_in_one_llm_call(llm: LLMServer, scheduled: Callable[..., DaprRun]) -> None:
    schedule = every(PERIOD_S, "clocks")
    service = scheduled([schedule])
    runs_of(SERVICE_URL, schedule["name"], 3, 60)
    stop_ticks(service, schedule["name"])

    runs = listed(SERVICE_URL, schedule["name"])
    assert_one_run_per_tick(llm, SERVICE_URL, schedule, runs)
    assert tick_times(runs) == [tick_times(runs)[0] + PERIOD_S * n for n in range(len(runs))], "a tick was missed"
    assert ticks_seen(service) >= len(runs)
    print(f"\nticks seen {ticks_seen(service)}, runs {len(runs)}, LLM calls {calls_for(llm, schedule['task'])}")
    listing = requests.get(LIST.split()[1], timeout=30).json()
    assert [s["name"] for s in listing] == [schedule["name"]] and listing[0]["task"] == schedule["task"]
    # An ordinary run: its entry, with the store's TTL, and its workflow's trace in Zipkin.
    instance_id = runs[0]["instance_id"]
    assert 0 < int(redis_cli("ttl", f"durable-agent-service||assistant:_workflow_{instance_id}")) <= 7 * 24 * 3600
    wait_for(lambda: workflow_traced(instance_id), 30, f"the trace of run {instance_id} in Zipkin", 1)


def test_two_replicas_run_each_tick_once_and_miss_none(llm: LLMServer, scheduled: Callable[..., DaprRun]) -> None:
    schedule = every(PERIOD_S, "pairs")
    first = scheduled([schedule])
    second = scheduled([schedule], SECOND_REPLICA, SECOND_URL)
    started_with_both = time.time()
    runs_of(SERVICE_URL, schedule["name"], 6, 90, since=started_with_both)
    stop_ticks(first, schedule["name"])

    runs = listed(SERVICE_URL, schedule["name"])
    assert listed(SECOND_URL, schedule["name"]) == runs
    assert_one_run_per_tick(llm, SERVICE_URL, schedule, runs)
    since_both = [t for t in tick_times(runs) if t > started_with_both]
    assert len(since_both) >= 6 and since_both == [since_both[0] + PERIOD_S * n for n in range(len(since_both))]
    assert ticks_seen(first) + ticks_seen(second) >= len(runs)
    print(f"\nticks seen by the replicas: {ticks_seen(first)} and {ticks_seen(second)}; runs {len(runs)}")


def test_ticks_missed_while_the_service_was_killed_start_one_run_when_it_is_back(
    llm: LLMServer, scheduled: Callable[..., DaprRun]
) -> None:
    schedule = every(PERIOD_S, "outages")
    service = scheduled([schedule])
    before = runs_of(SERVICE_URL, schedule["name"], 1, 30)
    for victim in ("appPid", "daprdPid"):
        os.kill(service.sidecar[victim], signal.SIGKILL)
    killed_at = time.time()
    wait_for(lambda: service.process.poll() is not None, 30, "`dapr run` to end after the kill")
    time.sleep(2.5 * PERIOD_S)  # two ticks, or three, pass with no replica up

    restarted_at = time.time()
    back = scheduled([schedule])
    back_at = time.time()
    wait_for(lambda: ticks_seen(back) >= 2, 30, "the scheduler to send the missed ticks")
    seen_at_start = ticks_seen(back)
    runs_of(SERVICE_URL, schedule["name"], len(before) + 2, 30)
    stop_ticks(back, schedule["name"])

    runs = listed(SERVICE_URL, schedule["name"])
    assert_one_run_per_tick(llm, SERVICE_URL, schedule, runs)
    while_down = [t for t in tick_times(runs) if killed_at + 1 < t < restarted_at - 1]
    assert while_down == [], f"ticks missed while down ran on their own: {while_down}"
    first_back = min(t for t in tick_times(runs) if t > killed_at + 1)
    assert first_back <= back_at + 1, "the ticks missed started no run: the first run back is a later tick's"
    print(
        f"ticks seen on return: {seen_at_start}; runs: {len(runs)}; kill {killed_at:.1f}, "
        f"restart {restarted_at:.1f}, back {back_at:.1f}, first run back {first_back:.0f}"
    )


def test_a_changed_schedule_holds_after_a_restart_and_one_taken_out_ends(
    llm: LLMServer, scheduled: Callable[..., DaprRun]
) -> None:
    changed, dropped = every(PERIOD_S, "changes"), every(PERIOD_S, "leavers")
    first = scheduled([changed, dropped])
    runs_of(SERVICE_URL, changed["name"], 1, 30)
    runs_of(SERVICE_URL, dropped["name"], 1, 30)
    calls_before = {s["name"]: calls_for(llm, s["task"]) for s in (changed, dropped)}
    first.stop()

    slower = f"@every {2 * PERIOD_S}s"
    service = scheduled([{**changed, "schedule": slower}])
    assert [s["schedule"] for s in requests.get(f"{SERVICE_URL}/schedules", timeout=30).json()] == [slower]
    assert requests.get(service.sidecar_url(f"/v1.0/jobs/{changed['name']}"), timeout=10).json()["schedule"] == slower

    def dropped_job_gone() -> bool:  # the sidecar answers 500 for a job the scheduler does not have
        answer = requests.get(service.sidecar_url(f"/v1.0/jobs/{dropped['name']}"), timeout=10)
        return answer.status_code == 404 or "job not found" in answer.text

    wait_for(dropped_job_gone, 3 * PERIOD_S, f"the job of {dropped['name']}, taken out of the file, to go", 1)
    runs_of(SERVICE_URL, changed["name"], 2, 60)
    stop_ticks(service, changed["name"])

    runs = listed(SERVICE_URL, changed["name"])
    assert all(t % (2 * PERIOD_S) == 0 for t in tick_times(runs)), tick_times(runs)
    assert all(run["runtime_status"] == "COMPLETED" for run in runs), runs
    assert calls_for(llm, changed["task"]) == calls_before[changed["name"]] + len(runs)
    assert calls_for(llm, dropped["task"]) == calls_before[dropped["name"]], "the schedule taken out ran again"


def test_the_job_door_turns_away_what_the_scheduler_would_not_send(
    llm: LLMServer, scheduled: Callable[..., DaprRun]
) -> None:
    schedule = every(PERIOD_S, "doors")
    service = scheduled([schedule])
    job_url = f"{SERVICE_URL}/job/{schedule['name']}"
    data = {"schedule": schedule["schedule"], "task": schedule["task"]}
    turned_away = [
        (requests.post(f"{SERVICE_URL}/job/no-such-schedule", json=data), 404),
        (requests.post(f"{SERVICE_URL}/job/a%20b", json=data), 404),
        (requests.post(job_url, data=b"{}", headers={"Content-Type": "text/plain"}), 415),
        (requests.post(job_url, data=b"{not json", headers={"Content-Type": "application/json"}), 400),
        (requests.post(job_url, json={**data, "task": "Something else."}), 422),
        (requests.post(job_url, json=[]), 422),
        (requests.post(job_url, data=b"[" + b" " * 400_000 + b"]", headers={"Content-Type": "application/json"}), 413),
        (requests.get(job_url), 405),
    ]
    assert [(a.status_code, expected) for a, expected in turned_away] == [(e, e) for _, e in turned_away]
    assert all("detail" in a.json() for a, _ in turned_away)

    # The scheduler's own call, sent again by hand: the tick it arrives in has its run, or gets one.
    first = runs_of(SERVICE_URL, schedule["name"], 1, 30)[-1]
    sent_again = [requests.post(job_url, json=data) for _ in range(3)]
    assert [a.status_code for a in sent_again] == [200] * 3
    assert len({a.json()["instance_id"] for a in sent_again}) <= 2  # a tick may pass between the three
    assert first["instance_id"] in {r["instance_id"] for r in listed(SERVICE_URL, schedule["name"])}
    stop_ticks(service, schedule["name"])
    assert_one_run_per_tick(llm, SERVICE_URL, schedule, listed(SERVICE_URL, schedule["name"]))


def test_a_schedule_file_with_a_mistake_stops_the_service_with_the_reason(
    dapr_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "schedules.yaml"
    path.write_text(yaml.safe_dump({"schedules": [{"name": "daily", "schedule": "0 9 * * *", "task": "A digest."}]}))
    run = DaprRun(SCHEDULED_SERVICE, {**dapr_env, "AGENT_SCHEDULES": str(path)}, "bad-schedule")
    try:
        wait_for(lambda: run.process.poll() is not None, 60, "the service to stop at its bad schedule file")
        assert "AGENT_SCHEDULES: " in run.log() and "'0 9 * * *' is neither" in run.log(), run.log()[-2000:]
    finally:
        run.stop()
    assert (ROOT / "schedules.yaml").is_file()
