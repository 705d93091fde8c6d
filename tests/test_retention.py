"""Retention: a completed run's workflow state is purged after the time config/dapr-config.yaml sets,
its entry expires after the TTL resources/agent-workflow.yaml sets, and a topic keeps its messages for
the time resources/agent-pubsub.yaml sets; once those have passed, runs of every kind leave nothing."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import requests
import yaml

from tests.conftest import (
    ROOT,
    SERVICE,
    SERVICE_URL,
    TASK,
    DaprRun,
    instance_with_task,
    page_command,
    post_run,
    post_with_key,
    psql,
    publish,
    redis_cli,
    scheduled_jobs,
    wait_for,
    wait_for_outcome,
    workflow_rows,
)
from tests.llm_server import HAIKU, LLMServer
from tests.test_approval_replicas import SECOND, SECOND_REPLICA, decide, waiting_on

WORKFLOW_LIST = page_command("python scripts/workflow_history.py --app-id")


def test_a_completed_runs_workflow_state_is_purged_and_its_entry_expires(
    llm: LLMServer, dapr_env: dict[str, str], tmp_path: Path
) -> None:
    config = yaml.safe_load((ROOT / "config" / "dapr-config.yaml").read_text())
    retention = config["spec"]["workflow"]["stateRetentionPolicy"]
    assert set(retention) == {"completed", "failed", "terminated"}
    retention["completed"] = "15s"  # the shipped configuration, its day shortened: long enough to count the keys
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    entries = yaml.safe_load((ROOT / "resources" / "agent-workflow.yaml").read_text())
    ttl = next(m for m in entries["spec"]["metadata"] if m["name"] == "ttlInSeconds")
    assert ttl["value"] == "604800"  # the week docs/cost.md states
    ttl["value"] = "30"  # and the entries' week shortened
    resources = tmp_path / "resources"
    shutil.copytree(ROOT / "resources", resources)
    (resources / "agent-workflow.yaml").write_text(yaml.safe_dump(entries))
    command = SERVICE.replace("./resources", str(resources)).replace(
        "dapr run", f"dapr run --config {tmp_path / 'config.yaml'}", 1
    )
    service = DaprRun(command, dapr_env, "retention")
    try:
        service.wait_until_ready(SERVICE_URL)
        instance_id = post_run(TASK)["instance_id"]
        assert wait_for_outcome(f"/agent/instances/{instance_id}")["runtime_status"] == "COMPLETED"

        def workflow_keys() -> list[str]:
            return workflow_rows(f"%.workflow||{instance_id}||%")

        entry_key = f"durable-agent-service||assistant:_workflow_{instance_id}"
        entry = service.get_state("agent-workflow", f"assistant:_workflow_{instance_id}")
        assert entry["messages"][-1]["content"] == HAIKU
        assert 0 < int(redis_cli("ttl", entry_key)) <= 30
        keys = workflow_keys()
        assert len(keys) >= 10, "the run left no workflow state to purge"
        # No TTL on the workflow's own state: it would expire a waiting run's steps one by one.
        expiring = "SELECT count(*) FROM state WHERE key LIKE :'p1' AND expires_at IS NOT NULL"
        assert psql(expiring, f"%{instance_id}%") == [["0"]]

        assert f"retentioner/{instance_id}/retention" in scheduled_jobs(dapr_env)  # the purge, due once the 15 s are up

        wait_for(lambda: not workflow_keys(), 45, "the completed run's workflow state to be purged")
        listed = subprocess.run(shlex.split(WORKFLOW_LIST), cwd=ROOT, env=dapr_env, capture_output=True, text=True)
        assert listed.returncode == 0 and instance_id not in listed.stdout, listed.stdout + listed.stderr
        wait_for(lambda: instance_id not in scheduled_jobs(dapr_env), 10, "the run's purge job to go once it fired")
        status = requests.get(f"{SERVICE_URL}/agent/instances/{instance_id}", timeout=5)
        assert status.status_code == 404, status.text
        wait_for(lambda: redis_cli("exists", entry_key).strip() == "0", 40, "the run's entry to expire")
    finally:
        service.stop()


def test_a_topic_keeps_its_messages_for_the_stream_ttl_its_component_sets(
    dapr_env: dict[str, str], tmp_path: Path
) -> None:
    pubsub = yaml.safe_load((ROOT / "resources" / "agent-pubsub.yaml").read_text())
    ttl = next(m for m in pubsub["spec"]["metadata"] if m["name"] == "streamTTL")
    assert ttl["value"] == "168h"  # the week docs/cost.md states
    ttl["value"] = "5s"  # the shipped component, with its week shortened to watch the trim
    resources = tmp_path / "resources"
    shutil.copytree(ROOT / "resources", resources)
    (resources / "agent-pubsub.yaml").write_text(yaml.safe_dump(pubsub))
    topic = f"bound-{uuid.uuid4().hex[:8]}"
    sidecar = DaprRun(
        f"dapr run --app-id ttl-check --resources-path {resources} --dapr-listen-addresses 127.0.0.1", dapr_env, "ttl"
    )
    try:
        sidecar.wait_for_sidecar()
        url = sidecar.sidecar_url(f"/v1.0/publish/agent-pubsub/{topic}")
        with requests.Session() as session:
            for n in range(300):
                assert session.post(url, json={"n": n}, timeout=10).status_code == 204
            before = int(redis_cli("xlen", topic))
            time.sleep(6)
            assert session.post(url, json={"n": 300}, timeout=10).status_code == 204  # trims what is older
        after = int(redis_cli("xlen", topic))

        print(f"\n{topic}: {before} messages, {after} after the TTL and one more publish")
        # Redis trims whole nodes of its stream (100 entries each), so up to 100 old ones stay.
        assert before >= 250 and after <= 101, (before, after)
    finally:
        sidecar.stop()
        redis_cli("del", topic)


def shortened(tmp_path: Path, seconds: int) -> tuple[Path, Path]:
    """The shipped configuration and resources, every retention and TTL shortened to `seconds`."""
    config = yaml.safe_load((ROOT / "config" / "dapr-config.yaml").read_text())
    retention = config["spec"]["workflow"]["stateRetentionPolicy"]
    for status in retention:
        retention[status] = f"{seconds}s"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    resources = tmp_path / "resources"
    shutil.copytree(ROOT / "resources", resources)
    for name in ("agent-workflow", "agent-approvals"):
        component = yaml.safe_load((resources / f"{name}.yaml").read_text())
        (ttl,) = [m for m in component["spec"]["metadata"] if m["name"] == "ttlInSeconds"]
        ttl["value"] = str(seconds)
        (resources / f"{name}.yaml").write_text(yaml.safe_dump(component))
    return tmp_path / "config.yaml", resources


def apps_keys() -> set[str]:
    """Every key in Redis and row in PostgreSQL that the two agents' apps own (Dapr prefixes their
    state with the app id)."""
    keys = redis_cli("--scan", "--pattern", "durable-agent-*").split() + workflow_rows("durable-agent-%")
    return {key for key in keys if key.startswith(("durable-agent-service||", "durable-agent-tool||"))}


def stream_keys() -> set[str]:
    return set(redis_cli("--scan", "--pattern", "agents.stream.*").split())


def test_runs_of_every_kind_leave_only_what_a_fresh_agent_holds_once_retention_has_passed(
    llm: LLMServer, dapr_env: dict[str, str], tmp_path: Path, outbox: Path
) -> None:
    config, resources = shortened(tmp_path, 30)

    def with_test_settings(command: str) -> str:
        return command.replace("./resources", str(resources)).replace("dapr run", f"dapr run --config {config}", 1)

    service = DaprRun(with_test_settings(SERVICE), dapr_env, "bound-service")
    tool = DaprRun(with_test_settings(SECOND_REPLICA), {**dapr_env, "APPROVAL_TIMEOUT_SECONDS": "600"}, "bound-tool")
    try:
        service.wait_until_ready(SERVICE_URL)
        tool.wait_until_ready(SECOND)
        fresh, fresh_streams = apps_keys(), stream_keys()
        batch = uuid.uuid4().hex[:8]
        written: set[str] = set()  # counted as each run ends, before the retention can purge it

        def ended(instance_id: str, service_url: str = SERVICE_URL) -> None:
            outcome = wait_for_outcome(f"/agent/instances/{instance_id}", service_url=service_url)
            assert outcome["runtime_status"] == "COMPLETED", outcome
            written.update(apps_keys() - fresh)

        ended(post_run(f"{TASK} ({batch}, posted)")["instance_id"])
        with requests.post(f"{SERVICE_URL}/run/stream", json={"task": f"{TASK} ({batch}, streamed)"}, stream=True) as s:
            streamed = json.loads(next(s.iter_lines()))["workflow_instance_id"]
            list(s.iter_lines())
        ended(streamed)
        assert publish(f"{TASK} ({batch}, published)", dapr_env).returncode == 0
        ended(wait_for(lambda: instance_with_task(f"({batch}, published)"), 30, "the published task's run"))
        ended(post_with_key(f"{TASK} ({batch}, keyed)", f"key-{batch}").json()["instance_id"])
        purged = post_run(f"{TASK} ({batch}, purged)")["instance_id"]
        ended(purged)
        assert requests.post(f"{SERVICE_URL}/agent/instances/{purged}/purge", timeout=30).status_code == 200
        approved = post_run(f"Write a haiku and publish it ({batch}).", SECOND)["instance_id"]
        (approval,) = waiting_on(SECOND, [approved])
        assert decide(SECOND, approval).status_code == 200
        ended(approved, SECOND)
        assert len(written) >= 50, f"the six runs wrote only {len(written)} keys: the story proves nothing"
        assert any(".workflow||" in key for key in written), "no workflow rows in PostgreSQL among them"

        deadline = time.monotonic() + 150  # the 30 s retention and TTLs, and the sidecars' purges after them
        while (left := (apps_keys() - fresh) | (stream_keys() - fresh_streams)) and time.monotonic() < deadline:
            time.sleep(2)
        print(f"\nsix kinds of run wrote {len(written)} keys; after retention and TTLs, left: {sorted(left)}")
        assert not left, f"left after retention and TTLs: {sorted(left)}"
    finally:
        service.stop()
        tool.stop()
