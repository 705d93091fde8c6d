"""Fixtures for the tests of the one-node cluster that `make k8s-up` starts, and of the agent on it.

The cluster is the fixture nobody here starts or stops: a missing one fails every test with the
command that starts it. What a test creates in it (namespaces, pods, the agent) its fixture deletes.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".cache" / "k8s" / "bin"
KUBECONFIG = ROOT / ".run" / "k8s" / "admin.kubeconfig"
DAPR = ROOT / ".dapr" / "bin" / "dapr"  # the project's CLI (scripts/setup.sh)
PINS = dict(
    line.split("=", 1) for line in (ROOT / "versions.env").read_text().splitlines() if line and not line.startswith("#")
)
START_HINT = "the cluster is not up: run `make k8s-up` (then `make k8s-test`)"


def env() -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": str(KUBECONFIG), "PATH": f"{BIN}:{os.environ['PATH']}"}


def run(
    *args: str, check: bool = True, timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=timeout, input=stdin)
    if check and done.returncode != 0:
        pytest.fail(f"`{' '.join(args)}` exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def kubectl(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return run(str(BIN / "kubectl"), *args, **kwargs)


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json").stdout)


@pytest.fixture(scope="session", autouse=True)
def cluster() -> None:
    """Fails every test, naming the fix, when there is no cluster to test."""
    if not (BIN / "kubectl").exists() or not KUBECONFIG.exists():
        pytest.fail(START_HINT)
    ready = run(str(BIN / "kubectl"), "get", "--raw", "/readyz", check=False, timeout=15)
    if ready.returncode != 0 or ready.stdout.strip() != "ok":
        pytest.fail(f"{START_HINT}\n{ready.stdout}{ready.stderr}")


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    """A throwaway namespace, deleted with everything in it when the module's tests end."""
    name = f"tda-smoke-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=true", "--timeout=60s", check=False, timeout=90)


@pytest.fixture(scope="module")
def smoke_pod(namespace: str) -> str:
    """A pod annotated for Dapr, as a user's app would be, whose app does nothing; its name."""
    pause = f"localhost/k8s/pause:{(BIN / '.pause.version').read_text().strip()}"
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
        "spec": {"containers": [{"name": "app", "image": pause, "imagePullPolicy": "Never"}]},
    }
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(pod))
    kubectl("wait", "pod", "smoke", "-n", namespace, "--for", "condition=Ready", "--timeout", "90s", timeout=100)
    return "smoke"
