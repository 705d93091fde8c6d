"""The agent on the cluster, deployed from deploy/ as docs/kubernetes.md tells a user.

`deploy` applies k8s/tests/overlay (deploy/, its stand-ins, the stand-in LLM) once for the stories
of test_agent.py and deletes the namespace after them. The stories reach the cluster from this
machine the way a caller in the cluster would: at Service addresses, through the sidecar.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import yaml

from k8s.tests.conftest import ROOT, env, kubectl, kubectl_json
from tests.conftest import page_command, page_commands, wait_for

NAMESPACE = "durable-agent"
APP_ID = "durable-agent-service"
TOOL_APP_ID = "durable-agent-tool"
MCP_APP_ID = "durable-agent-mcp"
# Each agent's Service and pod label (deploy/agent.yaml, deploy/tool-agent.yaml, deploy/mcp-agent.yaml).
DEPLOYMENT_OF = {APP_ID: "durable-agent", TOOL_APP_ID: "durable-agent-tool", MCP_APP_ID: "durable-agent-mcp"}
OVERLAY = ROOT / "k8s" / "tests" / "overlay"
# The images `make k8s-up` built from a Dockerfile, each recorded with the tag it was built at.
IMAGE_RECORDS = [ROOT / ".cache" / "k8s" / "images" / name for name in ("agent-image", "mcp-time-image")]
VOLUMES = ROOT / ".run" / "k8s" / "volumes"
# docs/kubernetes.md's commands: the namespace and the four Secrets deploy/ reads, and the rollout.
NAMESPACE_AND_SECRETS = [page_command("kubectl create namespace"), *page_commands("kubectl create secret generic")]
ROLLOUT = page_command("kubectl rollout status deployment/durable-agent")
STAND_INS_WITH_DATA = ("postgres", "redis")
BUILD_HINT = "no {} was recorded: run `make k8s-up` (it builds the Dockerfiles with buildah)"


@dataclass
class Agent:
    """The deployed agent, as a caller in the cluster sees it, and the stand-ins beside it."""

    api_token: str
    openai_key: str
    redis_password: str
    postgres_password: str
    image: str  # the agents'
    mcp_time_image: str
    ready_after: float = 0.0  # seconds from `kubectl apply` to the agent pod's Ready
    service_ips: dict[str, str] = field(default_factory=dict)

    def service_ip(self, name: str) -> str:
        if name not in self.service_ips:
            jsonpath = "jsonpath={.spec.clusterIP}"
            self.service_ips[name] = kubectl("get", "service", name, "-n", NAMESPACE, "-o", jsonpath).stdout
        return self.service_ips[name]

    def call(
        self, method: str, path: str, token: str | None = None, app_id: str = APP_ID, **kwargs: Any
    ) -> requests.Response:
        """A call to an agent's app through its Service and sidecar (service invocation)."""
        url = f"http://{self.service_ip(DEPLOYMENT_OF[app_id])}/v1.0/invoke/{app_id}/method{path}"
        headers = {"dapr-api-token": self.api_token if token is None else token, **kwargs.pop("headers", {})}
        return requests.request(method, url, headers=headers, timeout=30, **kwargs)

    def publish(self, event: dict[str, Any]) -> requests.Response:
        url = f"http://{self.service_ip('durable-agent')}/v1.0/publish/agent-pubsub/assistant.topic"
        headers = {"dapr-api-token": self.api_token, "Content-Type": "application/cloudevents+json"}
        return requests.post(url, data=json.dumps(event), headers=headers, timeout=30)

    def answers(self, app_id: str) -> bool:
        """The app answers through its Service and sidecar, whatever it answers."""
        try:
            self.call("GET", "/healthz", app_id=app_id)
        except requests.ConnectionError:
            return False
        return True

    def llm(self, method: str, path: str, **kwargs: Any) -> Any:
        """The stand-in LLM's control API (k8s/tests/stand_in_llm.py)."""
        url = f"http://{self.service_ip('stand-in-llm')}:8081{path}"
        answer = requests.request(method, url, timeout=10, **kwargs)
        answer.raise_for_status()
        return answer.json()

    def llm_calls_for(self, task: str) -> int:
        return sum(1 for r in self.llm("GET", "/requests") if task in r["asked"])

    def status(self, instance_id: str, app_id: str = APP_ID) -> dict[str, Any] | None:
        try:
            answer = self.call("GET", f"/agent/instances/{instance_id}", app_id=app_id)
        except requests.ConnectionError:  # the Service led to a pod just deleted: ask again
            return None
        return answer.json() if answer.status_code == 200 else None

    def outcome(self, instance_id: str, timeout: float = 120, app_id: str = APP_ID) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            status = self.status(instance_id, app_id)
            return status if status and status["runtime_status"] in ("COMPLETED", "FAILED", "TERMINATED") else None

        return wait_for(ended, timeout, f"run {instance_id} to end", interval=0.5)

    def pods(self, app_id: str = APP_ID) -> list[dict[str, Any]]:
        return kubectl_json("get", "pods", "-n", NAMESPACE, "-l", f"app={DEPLOYMENT_OF[app_id]}")["items"]

    def wait_ready(self, replicas: int, timeout: float = 180, app_id: str = APP_ID) -> list[str]:
        """The names of an agent's pods once there are `replicas` of them, all Ready, none going away."""

        def ready() -> list[str] | None:
            pods = self.pods(app_id)  # one listing, so that the count and the states agree
            settled = all(_ready(p) and not p["metadata"].get("deletionTimestamp") for p in pods)
            return [p["metadata"]["name"] for p in pods] if len(pods) == replicas and settled else None

        return wait_for(ready, timeout, f"{replicas} Ready {app_id} pod(s) in {NAMESPACE}", interval=1)

    def busiest_pod(self) -> tuple[str, int]:
        """The agent pod whose sidecar hosts the most workflow activities now (each LLM call is one),
        and how many it hosts."""
        hosted = {}
        for pod in self.pods():
            url = f"http://{pod['status']['podIP']}:3500/v1.0/metadata"
            metadata = requests.get(url, headers={"dapr-api-token": self.api_token}, timeout=10).json()
            actors = metadata["actorRuntime"].get("activeActors", [])  # a count of 0 is left out
            hosted[pod["metadata"]["name"]] = sum(a.get("count", 0) for a in actors if a["type"].endswith(".activity"))
        print(f"\nactivities hosted per pod: {hosted}")
        return max(hosted.items(), key=lambda item: item[1])

    def redis_values(self) -> str:
        """Every value in Redis, whatever its type, as text (--no-raw: bytes that are not, as \\xff)."""
        redis_cli = ["redis-cli", "--no-raw", "--no-auth-warning", "-a", self.redis_password]
        return kubectl("exec", "redis-0", "-n", NAMESPACE, "--", *redis_cli, "EVAL", ALL_VALUES, "0").stdout

    def workflow_rows(self, sql: str) -> list[str]:
        """What `sql` answers in the PostgreSQL stand-in's database "dapr", where the workflows' state
        is: one line a row."""
        psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "dapr", "-qAtX", "-c", sql]
        command = ["env", f"PGPASSWORD={self.postgres_password}", *psql]
        return kubectl("exec", "postgres-0", "-n", NAMESPACE, "--", *command).stdout.splitlines()


# Every key's value in Redis, flattened to lines: strings, hashes, lists, sets, sorted sets, streams.
ALL_VALUES = """
local out = {}
local function add(values) for _, v in ipairs(values) do
  if type(v) == 'table' then add(v) else table.insert(out, tostring(v)) end end end
for _, key in ipairs(redis.call('KEYS', '*')) do
  local kind = redis.call('TYPE', key).ok
  table.insert(out, key)
  if kind == 'string' then add({redis.call('GET', key)})
  elseif kind == 'hash' then add(redis.call('HGETALL', key))
  elseif kind == 'list' then add(redis.call('LRANGE', key, 0, -1))
  elseif kind == 'set' then add(redis.call('SMEMBERS', key))
  elseif kind == 'zset' then add(redis.call('ZRANGE', key, 0, -1))
  elseif kind == 'stream' then add(redis.call('XRANGE', key, '-', '+')) end
end
return table.concat(out, '\\n')
"""


def _ready(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return conditions.get("Ready") == "True"


def key_digest(key: str) -> str:
    """What the stand-in LLM reports of the Authorization header it got: its digest, not the key."""
    return hashlib.sha256(f"Bearer {key}".encode()).hexdigest()


def rendered_overlay(images: list[str]) -> list[dict[str, Any]]:
    """k8s/tests/overlay as kustomize renders it, with the images at the tags the build made."""
    built = {image.split(":")[0]: image for image in images}
    documents = [d for d in yaml.safe_load_all(kubectl("kustomize", str(OVERLAY)).stdout) if d]
    for document in documents:
        for container in document.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            container["image"] = built.get(container["image"].split(":")[0], container["image"])
    return documents


def create_namespace_and_secrets(openai_key: str) -> None:
    """docs/kubernetes.md's commands that make the namespace and the four Secrets deploy/ reads."""
    for command in NAMESPACE_AND_SECRETS:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            env={**env(), "OPENAI_API_KEY": openai_key},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            pytest.fail(f"`{command}` exited {done.returncode}:\n{done.stdout}{done.stderr}")


def secret_value(name: str, key: str) -> str:
    encoded = kubectl("get", "secret", name, "-n", NAMESPACE, "-o", f"jsonpath={{.data.{key}}}").stdout
    return base64.b64decode(encoded).decode()


def create_volume(stand_in: str) -> None:
    """The volume a stand-in's claim binds to (data-<stand-in>-0): this one-node cluster has no
    storage class. Both stand-ins run as user 999 (deploy/stand-ins/)."""
    folder = VOLUMES / f"{stand_in}-data"
    shutil.rmtree(folder, ignore_errors=True)  # an earlier run's data
    folder.mkdir(parents=True)
    os.chown(folder, 999, 999)
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"durable-agent-{stand_in}"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "claimRef": {"namespace": NAMESPACE, "name": f"data-{stand_in}-0"},
            "hostPath": {"path": str(folder), "type": "Directory"},
        },
    }
    kubectl("apply", "-f", "-", stdin=json.dumps(volume))


def create_llm_code() -> None:
    kubectl(
        "create", "configmap", "stand-in-llm", "-n", NAMESPACE,
        f"--from-file=llm_server.py={ROOT / 'tests' / 'llm_server.py'}",
        f"--from-file=stand_in_llm.py={ROOT / 'k8s' / 'tests' / 'stand_in_llm.py'}",
    )  # fmt: skip


def logs_of_namespace() -> str:
    """Every container's log in the namespace, as `kubectl logs` shows it."""
    logs = []
    for pod in kubectl_json("get", "pods", "-n", NAMESPACE)["items"]:
        for container in pod["spec"]["containers"]:
            name = pod["metadata"]["name"]
            done = kubectl("logs", name, "-n", NAMESPACE, "-c", container["name"], check=False)
            logs.append(f"--- {name}/{container['name']}\n{done.stdout}{done.stderr}")
    return "\n".join(logs)


def delete_namespace() -> None:
    # The namespace first, so that no controller makes new pods; then its pods at once: their grace
    # periods (up to 75 s) are for runs, and none is left to finish.
    kubectl("delete", "namespace", NAMESPACE, "--wait=false", "--ignore-not-found", check=False)
    kubectl("delete", "pods", "--all", "-n", NAMESPACE, "--grace-period=0", "--force", check=False)
    kubectl("wait", "--for=delete", f"namespace/{NAMESPACE}", "--timeout=120s", check=False, timeout=130)
    for stand_in in STAND_INS_WITH_DATA:
        kubectl("delete", "persistentvolume", f"durable-agent-{stand_in}", "--ignore-not-found", check=False)


@contextlib.contextmanager
def deploy() -> Iterator[Agent]:
    """deploy/ applied and Ready, with its Secrets; the namespace and its volume deleted afterwards."""
    for record in IMAGE_RECORDS:
        if not record.exists():
            pytest.fail(BUILD_HINT.format(record))
    openai_key = f"sk-tda-{secrets.token_hex(20)}"
    delete_namespace()  # what an interrupted earlier run left
    try:
        create_namespace_and_secrets(openai_key)
        agent = Agent(
            api_token=secret_value("dapr-api-token", "token"),
            openai_key=openai_key,
            redis_password=secret_value("redis", "password"),
            postgres_password=secret_value("postgres", "password"),
            image=IMAGE_RECORDS[0].read_text().strip(),
            mcp_time_image=IMAGE_RECORDS[1].read_text().strip(),
        )
        for stand_in in STAND_INS_WITH_DATA:
            create_volume(stand_in)
        create_llm_code()
        items = rendered_overlay([agent.image, agent.mcp_time_image])
        manifests = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        # Checked against the API server's schemas (Kubernetes' and Dapr's CRDs) before anything is applied.
        kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", stdin=manifests)
        applied = time.monotonic()
        kubectl("apply", "--validate=strict", "-f", "-", stdin=manifests)
        for name in (
            "statefulset/postgres",
            "statefulset/redis",
            "deployment/zipkin",
            "deployment/stand-in-llm",
            "deployment/durable-agent-tool",
            "deployment/mcp-time",
            "deployment/durable-agent-mcp",
        ):
            done = kubectl("rollout", "status", name, "-n", NAMESPACE, "--timeout=240s", check=False, timeout=250)
            if done.returncode != 0:
                pytest.fail(f"{name} did not become Ready:\n{done.stdout}{done.stderr}\n{logs_of_namespace()[-6000:]}")
        done = subprocess.run(shlex.split(ROLLOUT), env=env(), capture_output=True, text=True, timeout=250)
        if done.returncode != 0:
            pytest.fail(
                f"`{ROLLOUT}` exited {done.returncode}:\n{done.stdout}{done.stderr}\n{logs_of_namespace()[-6000:]}"
            )
        agent.ready_after = time.monotonic() - applied
        # A pod is Ready a moment before kube-proxy leads its Service to it: until then a call is refused.
        for app_id in DEPLOYMENT_OF:
            wait_for(lambda a=app_id: agent.answers(a), 60, f"the Service of {app_id} to lead to its pod", interval=0.5)
        yield agent
    finally:
        delete_namespace()
