"""Smoke test of `make k8s-up`: a one-node Kubernetes with Dapr's control plane, built here.

Run by `make k8s-test` against the running cluster. It checks what a user of Dapr on Kubernetes
relies on: the API server answers, the node is Ready, `dapr status -k` reports a healthy control
plane at the pinned version, an annotated pod gets a `daprd` sidecar (with a workload certificate
from sentry, without which the sidecar does not start) whose metadata API answers and shows it
connected to placement and the three schedulers, and the cluster's network stays inside this machine
(a pod can route to pods and Services only, no rule forwards or NATs to the outside interface, and
the check that says so fails when such a rule is planted). `make k8s-up` again changes nothing.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from k8s.tests.conftest import DAPR, PINS, ROOT, kubectl, kubectl_json, run
from tests.conftest import wait_for
from tests.pages import page_command

DAPR_NAMESPACE = "dapr-system"
EXPORT_KUBECONFIG = page_command("export KUBECONFIG=")
GET_PODS = page_command("kubectl get pods -A")
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


def test_the_pages_kubectl_in_a_shell_set_up_as_it_says_lists_the_control_plane() -> None:
    shell = f"{EXPORT_KUBECONFIG} && {GET_PODS}"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", shell], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    listed = {line.split()[1] for line in done.stdout.splitlines()[1:] if line.split()[0] == DAPR_NAMESPACE}
    assert all(any(pod.startswith(name) for pod in listed) for name in CONTROL_PLANE), done.stdout


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


def test_an_annotated_pod_gets_a_daprd_sidecar_whose_metadata_answers(namespace: str, smoke_pod: str) -> None:
    spec = kubectl_json("get", "pod", smoke_pod, "-n", namespace)["spec"]
    assert [c["name"] for c in spec["containers"]] == ["app", "daprd"], "the injector added no sidecar"
    assert spec["containers"][1]["image"] == f"localhost/dapr/daprd:{PINS['DAPR_RUNTIME_VERSION']}"

    def metadata() -> dict[str, Any] | None:
        path = f"/api/v1/namespaces/{namespace}/pods/{smoke_pod}:3500/proxy/v1.0/metadata"
        done = kubectl("get", "--raw", path, check=False)
        return json.loads(done.stdout) if done.returncode == 0 else None

    answer = wait_for(metadata, 30, "the sidecar's metadata API")
    assert answer["id"] == "smoke"
    assert answer["runtimeVersion"] == PINS["DAPR_RUNTIME_VERSION"]
    assert answer["actorRuntime"]["placement"] == "placement: connected", answer
    assert len(answer["scheduler"]["connected_addresses"]) == 3, answer
    # In Kubernetes mode the sidecar starts only with a workload certificate from sentry (mTLS).
    logs = kubectl("logs", smoke_pod, "-n", namespace, "-c", "daprd").stdout
    assert "Security is initialized successfully" in logs, logs[-2000:]


def test_a_pod_has_routes_to_the_pods_and_services_only(namespace: str, smoke_pod: str) -> None:
    pod_ip = kubectl_json("get", "pod", smoke_pod, "-n", namespace)["status"]["podIP"]
    netns_dir = ROOT / ".run/k8s/containerd/io.containerd.grpc.v1.cri/netns"

    def in_pod(*command: str) -> str:
        for netns in netns_dir.iterdir():
            addresses = run("nsenter", f"--net={netns}", "ip", "-4", "-o", "addr", "show", "dev", "eth0", check=False)
            if f"inet {pod_ip}/" in addresses.stdout:
                return run("nsenter", f"--net={netns}", *command).stdout
        raise AssertionError(f"no network namespace under {netns_dir} has {pod_ip}")

    routes = sorted(
        line.split(" proto")[0].split(" scope")[0].strip() for line in in_pod("ip", "-4", "route").splitlines()
    )
    assert routes == ["10.244.0.0/24 dev eth0", "10.96.0.0/16 via 10.244.0.1 dev eth0"], routes


def test_the_cluster_is_kept_inside_this_machine() -> None:
    check = subprocess.run([str(ROOT / "k8s" / "cluster.sh"), "check"], capture_output=True, text=True, check=False)

    assert check.returncode == 0, check.stdout + check.stderr


def test_the_isolation_check_fails_on_a_rule_that_would_nat_pods_to_the_outside() -> None:
    outside = run("ip", "-4", "route", "show", "default").stdout.split(" dev ")[1].split()[0]
    rule = ["-t", "nat", "-I", "POSTROUTING", "-s", "10.244.0.0/24", "-o", outside, "-j", "MASQUERADE"]
    run("iptables", "-w", *rule)
    try:
        check = subprocess.run([str(ROOT / "k8s" / "cluster.sh"), "check"], capture_output=True, text=True, check=False)
    finally:
        run("iptables", "-w", *(["-D" if part == "-I" else part for part in rule]))

    assert check.returncode != 0, check.stdout
    assert f"an iptables rule sends traffic out of {outside}" in check.stderr, check.stderr


def test_k8s_up_again_on_a_running_cluster_changes_nothing() -> None:
    def control_plane() -> dict[str, tuple[str, int]]:
        pods = kubectl_json("get", "pods", "-n", DAPR_NAMESPACE)["items"]
        return {
            p["metadata"]["name"]: (
                p["metadata"]["uid"],
                sum(c["restartCount"] for c in p["status"]["containerStatuses"]),
            )
            for p in pods
        }

    before = control_plane()
    again = subprocess.run(
        [str(ROOT / "k8s" / "cluster.sh"), "up"], capture_output=True, text=True, check=False, timeout=300
    )

    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already running") == 7, again.stdout
    assert control_plane() == before
