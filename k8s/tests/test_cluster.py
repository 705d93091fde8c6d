"""Smoke test of `make k8s-up`: a one-node Kubernetes with Dapr's control plane, built here.

Run by `make k8s-test` against the running cluster. It checks what a user of Dapr on Kubernetes
relies on: the API server answers, the node is Ready, `dapr status -k` reports a healthy control
plane at the pinned version, an annotated pod gets a `daprd` sidecar (with a workload certificate
from sentry, without which the sidecar does not start) whose metadata API answers and shows it
connected to placement and the three schedulers, and the cluster's network stays inside this machine.
"""

from __future__ import annotations

import json
import subprocess

from k8s.tests.conftest import DAPR, PINS, ROOT, kubectl, kubectl_json, run, wait_for

DAPR_NAMESPACE = "dapr-system"
CONTROL_PLANE = [
    "dapr-operator",
    "dapr-placement-server",
    "dapr-scheduler-server",
    "dapr-sentry",
    "dapr-sidecar-injector",
]


def test_the_api_server_answers_at_the_pinned_version() -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)

    assert version["serverVersion"]["gitVersion"] == f"v{PINS['KUBERNETES_VERSION']}"
    assert version["clientVersion"]["gitVersion"] == f"v{PINS['KUBERNETES_VERSION']}"
    assert kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_the_node_is_ready() -> None:
    nodes = kubectl_json("get", "nodes")["items"]

    assert [n["metadata"]["name"] for n in nodes] == ["tda-node"]
    conditions = {c["type"]: c["status"] for c in nodes[0]["status"]["conditions"]}
    assert conditions["Ready"] == "True", conditions
    assert nodes[0]["status"]["nodeInfo"]["kubeletVersion"] == f"v{PINS['KUBERNETES_VERSION']}"


def test_dapr_status_reports_a_healthy_control_plane_at_the_pinned_version() -> None:
    out = run(str(DAPR), "status", "-k").stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}

    assert sorted(rows) == CONTROL_PLANE, out
    for name, (_, namespace, healthy, status, *_rest) in rows.items():
        assert (namespace, healthy, status) == (DAPR_NAMESPACE, "True", "Running"), f"{name}: {out}"
    assert all(PINS["DAPR_RUNTIME_VERSION"] in row for row in rows.values()), out


def test_every_control_plane_pod_is_ready_and_runs_images_built_here() -> None:
    pods = kubectl_json("get", "pods", "-n", DAPR_NAMESPACE)["items"]

    assert pods
    for pod in pods:
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"]
        assert ready == "True", pod["metadata"]["name"]
        for container in pod["spec"]["containers"]:
            assert container["image"].startswith("localhost/dapr/"), container["image"]
            assert container["image"].endswith(f":{PINS['DAPR_RUNTIME_VERSION']}"), container["image"]


def test_an_annotated_pod_gets_a_daprd_sidecar_whose_metadata_answers(namespace: str) -> None:
    pause = f"localhost/k8s/pause:{(ROOT / '.cache/k8s/bin/.pause.version').read_text().strip()}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "smoke",
            "annotations": {
                "dapr.io/enabled": "true",
                "dapr.io/app-id": "smoke",
                # The API server's pod proxy reaches the sidecar on the pod's address.
                "dapr.io/sidecar-listen-addresses": "0.0.0.0",
            },
        },
        "spec": {
            # The app is a do-nothing process: the test is about its sidecar.
            "containers": [{"name": "app", "image": pause, "imagePullPolicy": "Never"}],
        },
    }
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(pod))

    spec = kubectl_json("get", "pod", "smoke", "-n", namespace)["spec"]
    assert [c["name"] for c in spec["containers"]] == ["app", "daprd"], "the injector added no sidecar"
    assert spec["containers"][1]["image"] == f"localhost/dapr/daprd:{PINS['DAPR_RUNTIME_VERSION']}"
    kubectl("wait", "pod", "smoke", "-n", namespace, "--for", "condition=Ready", "--timeout", "90s", timeout=100)

    def metadata() -> dict[str, object] | None:
        done = kubectl(
            "get", "--raw", f"/api/v1/namespaces/{namespace}/pods/smoke:3500/proxy/v1.0/metadata", check=False
        )
        return json.loads(done.stdout) if done.returncode == 0 else None

    answer = wait_for(metadata, 30, "the sidecar's metadata API")
    assert answer["id"] == "smoke"
    assert answer["runtimeVersion"] == PINS["DAPR_RUNTIME_VERSION"]
    assert answer["actorRuntime"]["placement"] == "placement: connected", answer
    assert len(answer["scheduler"]["connected_addresses"]) == 3, answer
    # In Kubernetes mode the sidecar starts only with a workload certificate from sentry (mTLS).
    logs = kubectl("logs", "smoke", "-n", namespace, "-c", "daprd").stdout
    assert "Security is initialized successfully" in logs, logs[-2000:]


def test_the_cluster_is_kept_inside_this_machine() -> None:
    check = subprocess.run([str(ROOT / "scripts" / "k8s.sh"), "check"], capture_output=True, text=True, check=False)

    assert check.returncode == 0, check.stdout + check.stderr
