"""Cancel and clean up: docs/http-api.md's terminate and purge commands, on a held run and a finished one."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
import uuid

import requests

from tests.conftest import (
    SERVICE_URL,
    DaprRun,
    calls_for,
    page_command,
    post_run,
    redis_cli,
    wait_for,
    wait_for_outcome,
    workflow_rows,
)
from tests.llm_server import LLMServer

RUN_CONTROL = {
    action: page_command("curl -X POST http://localhost:8001/agent/instances/", containing=f"/{action}")
    for action in ("terminate", "purge")
}


def run_readme_curl(action: str, instance_id: str) -> dict[str, str]:
    """docs/http-api.md's `curl -X POST .../<instance-id>/<action>`, for this run."""
    done = subprocess.run(
        shlex.split(RUN_CONTROL[action].replace("<instance-id>", instance_id)), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def keys_of(instance_id: str) -> list[str]:
    """What the run holds: its entry in Redis and its workflow's state in PostgreSQL."""
    return redis_cli("--scan", "--pattern", f"*{instance_id}*").split() + workflow_rows(f"%{instance_id}%")


def test_terminating_a_run_whose_llm_call_is_held_ends_it_and_no_llm_call_follows(
    service: DaprRun, llm: LLMServer
) -> None:
    task = f"Write a haiku about stopping ({uuid.uuid4().hex[:8]})."
    release = llm.state.hold_next()
    run = post_run(task)
    wait_for(lambda: calls_for(llm, task) == 1, 30, "the run's LLM call")

    answer = run_readme_curl("terminate", run["instance_id"])

    assert answer == {"instance_id": run["instance_id"], "status": "terminated"}
    outcome = wait_for_outcome(run["status_url"])
    assert outcome["runtime_status"] == "TERMINATED"
    release.set()  # the held call now answers, into a run that has ended
    time.sleep(5)
    assert calls_for(llm, task) == 1
    assert wait_for_outcome(run["status_url"])["runtime_status"] == "TERMINATED"
    again = requests.post(f"{SERVICE_URL}{run['status_url']}/terminate", timeout=10)
    assert again.status_code == 409 and "ended already (TERMINATED)" in again.json()["detail"]


def test_purging_a_finished_run_deletes_its_workflow_state_and_the_agents_entry(
    service: DaprRun, llm: LLMServer
) -> None:
    run = post_run(f"Write a haiku about tidying up ({uuid.uuid4().hex[:8]}).")
    assert wait_for_outcome(run["status_url"])["runtime_status"] == "COMPLETED"
    assert any("_workflow_" in key for key in keys_of(run["instance_id"]))
    assert any(".workflow||" in key for key in keys_of(run["instance_id"]))

    answer = run_readme_curl("purge", run["instance_id"])

    assert answer == {"instance_id": run["instance_id"], "status": "purged"}
    assert keys_of(run["instance_id"]) == []
    status = requests.get(f"{SERVICE_URL}{run['status_url']}", timeout=10)
    assert status.status_code == 404
    again = requests.post(f"{SERVICE_URL}{run['status_url']}/purge", timeout=10)
    assert again.status_code == 404 and again.json()["detail"] == "no run has that id"


def test_a_running_run_cannot_be_purged_until_it_has_ended(service: DaprRun, llm: LLMServer) -> None:
    task = f"Write a haiku about patience ({uuid.uuid4().hex[:8]})."
    release = llm.state.hold_next()
    run = post_run(task)
    wait_for(lambda: calls_for(llm, task) == 1, 30, "the run's LLM call")

    refused = requests.post(f"{SERVICE_URL}{run['status_url']}/purge", timeout=10)

    assert refused.status_code == 409 and "RUNNING: terminate it first" in refused.json()["detail"]
    release.set()
    assert wait_for_outcome(run["status_url"])["runtime_status"] == "COMPLETED"
