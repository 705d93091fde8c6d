"""Beside `dapr init`: on a machine where Dapr already runs the usual way, the project uses the services
it finds and changes nothing the user installed.

The user's machine is played with what is here: the same binaries and servers, started outside the
project on the ports `dapr init` gives them, a ~/.dapr as it writes it, and a HOME of the story's own.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import (
    DAPR_BIN,
    ROOT,
    SERVICE,
    SERVICE_URL,
    TASK,
    DaprRun,
    port_open,
    post_run,
    redis_cli,
    stack_up,
    user_env,
    wait_for,
    wait_for_outcome,
)
from tests.llm_server import HAIKU, LLMServer
from tests.pages import page_command

OWN_STACK = page_command("make up OWN_STACK=1")

ZIPKIN_JAR = next((ROOT / ".cache").glob("zipkin-server-*-exec.jar"), None)

# What `dapr init` writes, in our own words: tracing to its Zipkin, and its Redis as state and pub/sub.
USERS_CONFIG = """apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: daprConfig
spec:
  tracing:
    samplingRate: "1"
    zipkin:
      endpointAddress: http://localhost:9411/api/v2/spans
"""
USERS_COMPONENTS = {
    "statestore.yaml": "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n"
    "  type: state.redis\n  version: v1\n  metadata:\n  - {name: redisHost, value: localhost:6379}\n"
    "  - {name: actorStateStore, value: 'true'}\n",
    "pubsub.yaml": "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n"
    "  type: pubsub.redis\n  version: v1\n  metadata:\n  - {name: redisHost, value: localhost:6379}\n",
}
# The services `dapr init` leaves running, with the health checks `make up` asks of each.
USERS_PORTS = {"redis": 6379, "placement": 50005, "scheduler": 50006, "zipkin": 9411}


def users_dapr_home(home: Path, version: str, used: Path) -> None:
    """~/.dapr as `dapr init` leaves it, its binaries stamped `version`: each answers --version with
    that stamp and otherwise runs the real one, after noting in `used` that it was run."""
    (home / ".dapr" / "components").mkdir(parents=True)
    (home / ".dapr" / "config.yaml").write_text(USERS_CONFIG)
    for name, text in USERS_COMPONENTS.items():
        (home / ".dapr" / "components" / name).write_text(text)
    (home / ".dapr" / "bin").mkdir()
    for binary in ("dapr", "daprd", "placement", "scheduler"):
        stamp = f"CLI version: {version} \\nRuntime version: {version}" if binary == "dapr" else version
        script = home / ".dapr" / "bin" / binary
        script.write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = --version ]; then printf "{stamp}\\n"; exit 0; fi\n'
            f'echo "{binary} $*" >>"{used}"\n'
            f'exec "{(DAPR_BIN / binary).resolve()}" "$@"\n'
        )
        script.chmod(0o755)


def snapshot(home: Path) -> dict[str, tuple[int, str]]:
    """Every path under `home`: its mode and its content's hash (a link's target)."""
    files = {}
    for path in sorted(home.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            content = os.readlink(path)
        elif path.is_file():
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            content = ""
        files[str(path.relative_to(home))] = (info.st_mode, content)
    return files


def healthy(name: str) -> bool:
    try:
        if name == "redis":
            return redis_cli("ping").strip() == "PONG"
        url = {
            "placement": "http://127.0.0.1:58080/healthz",
            "scheduler": "http://127.0.0.1:58081/healthz",
            "zipkin": "http://127.0.0.1:9411/health",
        }[name]
        return requests.get(url, timeout=2).ok
    except (subprocess.CalledProcessError, requests.RequestException):
        return False


@pytest.fixture
def users_services(tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """The session's stack stopped, and in its place the servers `dapr init` leaves running, started
    by the story; afterwards they are stopped by pid and the session's stack is started again."""
    if ZIPKIN_JAR is None:
        pytest.fail("the Zipkin jar is missing from .cache: run `make setup`", pytrace=False)
    subprocess.run([str(ROOT / "scripts" / "stack.sh"), "down"], check=True, capture_output=True)
    data = tmp_path / "users-data"
    commands = {
        "redis": ["redis-server", "--port", "6379", "--bind", "127.0.0.1", "--dir", str(data), "--save", ""],
        "placement": [str(DAPR_BIN / "placement"), "--listen-address", "127.0.0.1", "--port", "50005",
                      "--healthz-listen-address", "127.0.0.1", "--healthz-port", "58080",
                      "--metrics-listen-address", "127.0.0.1", "--metrics-port", "59090"],
        "scheduler": [str(DAPR_BIN / "scheduler"), "--listen-address", "127.0.0.1", "--port", "50006",
                      "--healthz-listen-address", "127.0.0.1", "--healthz-port", "58081",
                      "--metrics-listen-address", "127.0.0.1", "--metrics-port", "59091",
                      "--etcd-data-dir", str(data / "scheduler"), "--etcd-client-listen-address", "127.0.0.1",
                      "--override-broadcast-host-port", "127.0.0.1:50006"],
        "zipkin": ["java", "-Xmx256m", "-jar", str(ZIPKIN_JAR), "--armeria.ports[0].ip=127.0.0.1",
                   "--armeria.ports[0].port=9411", "--armeria.ports[0].protocols[0]=http"],
    }  # fmt: skip
    data.mkdir()
    processes = {}
    try:
        for name, command in commands.items():
            with (tmp_path / f"users-{name}.log").open("w") as log:
                processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=data)
        for name in commands:
            wait_for(lambda name=name: healthy(name), 60, f"the user's {name} to answer")
        yield processes
    finally:
        for process in processes.values():
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        stack_up()  # nothing is left to reuse: it starts the session's stack again


def test_make_run_and_the_service_use_dapr_inits_services_and_leave_its_home_and_processes_as_they_were(
    llm: LLMServer, users_services: dict[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    home, used = tmp_path / "home", tmp_path / "users-binaries-run"
    users_dapr_home(home, "1.17.0", used)
    before = snapshot(home)
    shell = user_env(llm.base_url)
    venv_bin, rest = shell["PATH"].split(":", 1)
    # As `dapr init` asks, ~/.dapr/bin is on the user's PATH; activating .venv puts the project's first.
    env = {**shell, "HOME": str(home), "PATH": f"{venv_bin}:{home / '.dapr' / 'bin'}:{rest}"}

    made = subprocess.run(["make", "run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = made.stdout + made.stderr
    assert made.returncode == 0, output
    print("\n`make run` on a machine where `dapr init` runs:\n" + output.split("\nModel: ")[0])
    for name, port in USERS_PORTS.items():
        assert f"  {name}: reusing the one already answering on 127.0.0.1:{port}" in output, output
    assert "  postgres: up on 127.0.0.1:55432" in output and "  model: up on 127.0.0.1:58000" in output, output
    assert HAIKU.splitlines()[0] in output and "Workflow id: " in output, output

    service = DaprRun(SERVICE, env, "beside-dapr-init")
    try:
        service.wait_until_ready(SERVICE_URL)
        assert service.metadata()["runtimeVersion"] != "1.17.0"
        assert wait_for_outcome(post_run(TASK)["status_url"])["runtime_status"] == "COMPLETED"
    finally:
        service.stop()

    stopped = subprocess.run(["make", "down"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    # `make down` stops what `make up` started, and only that.
    stopped_lines = [line.split(" (")[0] for line in stopped.stdout.splitlines()]
    assert stopped_lines == ["  model: stopped", "  postgres: stopped"], stopped.stdout
    # Asked for its own stack while the user's holds the ports, `make up` starts nothing and names the first.
    own = subprocess.run(OWN_STACK.split(), cwd=ROOT, env=env, capture_output=True, text=True)
    assert own.returncode != 0 and "stack: port 6379, which redis needs, is taken." in own.stderr, own
    assert not port_open(55432) and not port_open(58000)

    for name, process in users_services.items():
        assert process.poll() is None and healthy(name), f"the user's {name} did not survive the story"
    assert snapshot(home) == before
    assert not used.exists(), f"the user's ~/.dapr/bin was run: {used.read_text()}"

    # A port is not enough: where something takes Redis's connections and never answers, `make up`
    # starts nothing and says what failed.
    users_services["redis"].terminate()
    users_services["redis"].wait(20)
    with socket.create_server(("127.0.0.1", 6379)):
        refused = subprocess.run(["make", "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0, refused
    assert "stack: port 6379, which redis needs, is taken, and what holds it fails redis's health check" in (
        refused.stderr
    ), refused
    assert not port_open(55432) and not port_open(58000)


def test_setup_links_a_dapr_of_the_pinned_version_from_the_users_home_and_writes_nothing_there(
    tmp_path: Path,
) -> None:
    """`make setup` in a checkout with no Dapr of its own, for a user whose `dapr init --slim` gave the
    pinned versions: linked, not built or copied, and ~/.dapr byte for byte as it was."""
    checkout, home, used = tmp_path / "checkout", tmp_path / "home", tmp_path / "users-binaries-run"
    for part in ("scripts", "config"):
        shutil.copytree(ROOT / part, checkout / part)
    shutil.copy(ROOT / "versions.env", checkout)
    pins = dict(line.split("=", 1) for line in (ROOT / "versions.env").read_text().splitlines() if "=" in line)
    users_dapr_home(home, pins["DAPR_RUNTIME_VERSION"], used)
    # Only the CLI's stamp differs from the runtime's; a wrapper answers both.
    cli = home / ".dapr" / "bin" / "dapr"
    cli.write_text(
        cli.read_text().replace(
            f"CLI version: {pins['DAPR_RUNTIME_VERSION']}", f"CLI version: {pins['DAPR_CLI_VERSION']}"
        )
    )
    before = snapshot(home)

    setup = subprocess.run(
        [str(checkout / "scripts" / "setup.sh"), "dapr", "config"],
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        text=True,
    )
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert "yours in" in setup.stdout and "building" not in setup.stdout, setup.stdout
    for binary in ("dapr", "daprd", "placement", "scheduler"):
        assert os.readlink(checkout / ".dapr" / "bin" / binary) == str(home / ".dapr" / "bin" / binary)
    assert os.readlink(checkout / ".dapr" / "config.yaml") == "../config/dapr-config.yaml"
    launched = subprocess.run(
        [str(checkout / ".venv" / "bin" / "dapr"), "--version"], capture_output=True, text=True, check=True
    )
    assert f"CLI version: {pins['DAPR_CLI_VERSION']}" in launched.stdout
    assert snapshot(home) == before


@pytest.mark.parametrize("users_version", [None, "1.17.0"], ids=["no-dapr-init", "dapr-init-1.17.0"])
def test_setup_builds_the_cli_it_lacks_beside_any_other_and_changes_no_dapr_home(
    tmp_path: Path, users_version: str | None
) -> None:
    """No ~/.dapr at all, or one of a version the project does not test: `make setup` builds what it
    lacks (here the CLI, with this machine's Go caches, so in seconds) instead of stopping at the
    missing `~/.dapr/bin/dapr` or taking the other version, and ~/.dapr is as it was, or still absent."""
    checkout, home, used = tmp_path / "checkout", tmp_path / "home", tmp_path / "users-binaries-run"
    for part in ("scripts", "config"):
        shutil.copytree(ROOT / part, checkout / part)
    shutil.copy(ROOT / "versions.env", checkout)
    (checkout / ".dapr" / "bin").mkdir(parents=True)
    for binary in ("daprd", "placement", "scheduler"):  # the runtime as the project built it: only the CLI is missing
        (checkout / ".dapr" / "bin" / binary).symlink_to(DAPR_BIN / binary)
    if users_version:
        users_dapr_home(home, users_version, used)
    else:
        home.mkdir()
    before = snapshot(home / ".dapr")  # Go's own files in HOME (its telemetry) are Go's business
    go_caches = subprocess.run(["go", "env", "GOMODCACHE", "GOCACHE"], capture_output=True, text=True, check=True)
    mod_cache, build_cache = go_caches.stdout.split()

    setup = subprocess.run(
        [str(checkout / "scripts" / "setup.sh"), "dapr", "config"],
        env={**os.environ, "HOME": str(home), "GOMODCACHE": mod_cache, "GOCACHE": build_cache},
        capture_output=True,
        text=True,
    )

    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert "building the dapr CLI" in setup.stdout, setup.stdout
    if users_version:
        left_alone = f"your {home}/.dapr/bin has dapr CLI {users_version}, which this project does not test: left alone"
        assert left_alone in setup.stdout, setup.stdout
    pins = dict(line.split("=", 1) for line in (ROOT / "versions.env").read_text().splitlines() if "=" in line)
    built = subprocess.run([str(checkout / ".dapr" / "bin" / "dapr"), "--version"], capture_output=True, text=True)
    assert f"CLI version: {pins['DAPR_CLI_VERSION']}" in built.stdout, built.stdout + built.stderr
    assert snapshot(home / ".dapr") == before
    assert (home / ".dapr").exists() == bool(users_version)
    assert not used.exists(), f"the user's ~/.dapr/bin was run: {used.read_text()}"
