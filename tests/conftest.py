"""Fixtures that own the processes a user story needs.

The local stack (PostgreSQL, Redis, placement, scheduler, Zipkin) is started by `make test`; the fixtures
check it answers, run the stand-in LLM, and run the README's `dapr run` commands, each in the
background with its output in .run/test-logs, stopped by pid, its log attached to a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
import requests

from tests.llm_server import HAIKU, LLMServer
from tests.pages import page_command, page_commands

ROOT = Path(__file__).resolve().parent.parent
OUTBOX = ROOT / "outbox.txt"
# The project's own Dapr (scripts/setup.sh); the pages' `dapr` is .venv/bin/dapr, which runs it.
DAPR_BIN = ROOT / ".dapr" / "bin"
LOG_DIR = ROOT / ".run" / "test-logs"


# The stories run the pages' own commands, so a page that drifts fails the tests.
ONE_SHOT = page_command("dapr run --app-id durable-agent-minimal")
SERVICE = page_command("dapr run --app-id durable-agent-service", containing="-p 8001 --log-level warn -- python")
SCHEDULER_LIST = page_command("dapr scheduler list")
# The same with dapr-agents' own tracing switched on, through variables given to the app only.
TRACED_SERVICE = page_command("dapr run --app-id durable-agent-service", containing="-- env OTEL_")
ACTIVATE = page_command("source .venv/bin/activate")
# The variables the pages' `export OTEL_` lines set in the user's shell.
OTEL_EXPORTS = dict(pair.split("=", 1) for line in page_commands("export OTEL_") for pair in line.split()[1:])
PUBLISH = page_command("dapr publish --publish-app-id")
PUBLISH_RAW = page_command("dapr publish --metadata")
AGENT_TRACING = dict(w.split("=", 1) for w in TRACED_SERVICE.split(" -- env ")[1].split() if "=" in w)
SERVICE_URL = "http://localhost:8001"
TASK = "Write a haiku about programming."
FAKE_KEY = "sk-test-9f8e7d6c5b4a"

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def metrics(port: int) -> str:
    """The Prometheus text a sidecar or a stack process serves on `port`."""
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def scheduled_jobs(dapr_env: dict[str, str]) -> str:
    """What the pages' `dapr scheduler list` prints: the jobs Dapr's scheduler holds."""
    listed = subprocess.run(shlex.split(SCHEDULER_LIST), cwd=ROOT, env=dapr_env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    return listed.stdout


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def redis_cli(*args: str) -> str:
    """redis-cli's answer as text; bytes that are not UTF-8 (a binary payload someone published) are
    escaped, so that what an earlier story or user left in Redis cannot break a story."""
    return subprocess.run(["redis-cli", *args], capture_output=True, check=True).stdout.decode(
        errors="backslashreplace"
    )


# resources/workflow-state.yaml's database, as `make setup` installs and `make up` starts it.
PSQL = ["psql", "-h", "127.0.0.1", "-p", "55432", "-U", "postgres", "-d", "dapr"]


def psql(sql: str, *params: str) -> list[list[str]]:
    """The rows a query of the workflow's store returns, each a list of its columns as text.
    `params` fill :'p1', :'p2', ... in `sql`, quoted by psql."""
    variables = [f"--variable=p{n}={value}" for n, value in enumerate(params, 1)]
    done = subprocess.run(
        [*PSQL, "-qAtX", "-F", "\t", "-v", "ON_ERROR_STOP=1", *variables], input=sql, capture_output=True, text=True
    )
    assert done.returncode == 0, f"psql failed: {done.stderr}"
    return [line.split("\t") for line in done.stdout.splitlines()]


def workflow_rows(like: str) -> list[str]:
    """The keys of the workflow's state (table `state` of state.postgresql v2) that match `like`."""
    return [row[0] for row in psql("SELECT key FROM state WHERE key LIKE :'p1' ORDER BY key", like)]


def stack_pid(name: str) -> int:
    """The pid of a service of the local stack, from the pid file `make up` wrote."""
    return int((ROOT / ".run" / "pids" / f"{name}.pid").read_text())


def stack_up() -> None:
    """`make up` again: it starts what is not running (a service a story stopped) and leaves the rest."""
    subprocess.run([str(ROOT / "scripts" / "stack.sh"), "up"], check=True, capture_output=True)


# The local model `make up` serves (config/local-model.env), and its server's access log.
LOCAL_MODEL = dict(
    line.split("=", 1) for line in (ROOT / "config" / "local-model.env").read_text().splitlines() if "=" in line
)
MODEL_LOG = ROOT / ".run" / "logs" / "model.log"


def model_calls() -> list[int]:
    """The status of every chat completion the local model's server has answered, oldest first. A call
    whose caller left before the answer is not among them (uvicorn logs a response once sent)."""
    lines = MODEL_LOG.read_text(errors="replace").splitlines() if MODEL_LOG.exists() else []
    return [int(m[1]) for line in lines if (m := re.search(r'"POST /v1/chat/completions HTTP/1.1" (\d{3})', line))]


def model_generations() -> int:
    """How many answers the local model has written, whether or not anyone was left to read them."""
    text = MODEL_LOG.read_text(errors="replace") if MODEL_LOG.exists() else ""
    return len(re.findall(r"^llama_perf_context_print: +total time", text, re.MULTILINE))


def local_model_env() -> dict[str, str]:
    """A user's shell that followed the README with no OPENAI_ variables: the local model answers."""
    return {k: v for k, v in user_env("unused").items() if not k.startswith("OPENAI_")}


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _zipkin_healthy() -> bool:
    try:
        return requests.get("http://127.0.0.1:9411/health", timeout=2).ok
    except requests.RequestException:
        return False


@pytest.fixture(scope="session", autouse=True)
def stack() -> None:
    """Fail at once, naming the fix, when what the stories run on is missing."""
    for binary in ("daprd", "placement", "scheduler", "dapr"):
        if not (DAPR_BIN / binary).exists():
            pytest.fail(f"{DAPR_BIN / binary} is missing: run `make setup`", pytrace=False)
    for what, ready in (
        ("PostgreSQL on 55432", lambda: port_open(55432)),
        ("Redis on 6379", lambda: port_open(6379)),
        ("placement on 50005", lambda: port_open(50005)),
        ("scheduler on 50006", lambda: port_open(50006)),
        ("Zipkin on 9411", _zipkin_healthy),
        ("the local model on 58000", lambda: port_open(int(LOCAL_MODEL["LOCAL_MODEL_PORT"]))),
    ):
        if not ready():
            pytest.fail(f"{what} is not answering: run `make up` (or `make test`)", pytrace=False)


@pytest.fixture(scope="session")
def llm_server() -> Iterator[LLMServer]:
    server = LLMServer().start()
    yield server
    server.stop()


@pytest.fixture
def llm(llm_server: LLMServer) -> LLMServer:
    """The stand-in LLM, answering at once with HAIKU and with no requests recorded yet."""
    state = llm_server.state
    with state.lock:
        state.requests.clear()
        state.faults.clear()
        state.latency_s = 0.0
        state.down_until = 0.0
        state.reply = HAIKU
        state.gathering = None
        state.tool_call = None
    state.reset_counts()
    return llm_server


# What a make recipe's environment has and a user's shell has not: a `make run` a story starts would
# otherwise print make's "Entering directory" lines, and set up loudly or quietly by the outer make's say.
MAKE_ONLY = ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "SETUP_QUIET")


def user_env(llm_base_url: str) -> dict[str, str]:
    """A user's shell that followed the README, with the LLM pointed at `llm_base_url`."""
    # As a user's shell has it: without what `make test` sets for its own recipes.
    shell = {k: v for k, v in os.environ.items() if k not in MAKE_ONLY}
    activated = subprocess.run(
        ["bash", "-c", f"{ACTIVATE} && printenv PATH"], cwd=ROOT, env=shell, capture_output=True, text=True
    )
    assert activated.returncode == 0, f"`{ACTIVATE}` failed ({activated.stderr.strip()}): run `make setup`"
    return {
        **shell,
        **OTEL_EXPORTS,
        "OPENAI_API_KEY": FAKE_KEY,
        "OPENAI_BASE_URL": llm_base_url,
        "PATH": activated.stdout.strip(),
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="session")
def dapr_env(llm_server: LLMServer) -> dict[str, str]:
    return user_env(llm_server.base_url)


PORT_TAKEN = "could not listen on any endpoint"


class DaprRun:
    """One `dapr run` command in the background, stopped by pid."""

    started: ClassVar[list[DaprRun]] = []

    def __init__(self, command: str, env: dict[str, str], name: str, app_id: str | None = None) -> None:
        self.command = command
        self.app_id = app_id or command.split("--app-id ")[1].split()[0]
        # Replicas share an app id; the app port tells them apart in `dapr list`.
        self.app_port = int(command.split(" -p ")[1].split()[0]) if " -p " in command else None
        self.name, self.env, self.retried = name, env, False
        self._start()
        self.sidecar: dict[str, Any] = {}
        # Set when the sidecar requires its API token (DAPR_API_TOKEN in its environment).
        self.auth = {"dapr-api-token": env["DAPR_API_TOKEN"]} if "DAPR_API_TOKEN" in env else {}
        DaprRun.started.append(self)

    def _start(self) -> None:
        self.log_path = LOG_DIR / f"{self.name}-{time.strftime('%H%M%S')}-{len(DaprRun.started)}.log"
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                shlex.split(self.command),
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return strip_ansi(self.log_path.read_text(errors="replace"))

    def _exited(self) -> None:
        """Fails the story, the sidecar's fatal line first, once the run has died or its sidecar has."""
        log = self.log()
        # `dapr run` picks free ports, and another process can take one before daprd binds it: once
        # per run, start again.
        if PORT_TAKEN in log and not self.retried:
            self.retried = True
            self.stop()
            self._start()
            return
        fatal = "".join(f"{line}\n" for line in log.splitlines() if "level=fatal" in line)
        if self.process.poll() is not None or fatal:
            pytest.fail(f"`{self.command}` exited or its sidecar did:\n{fatal}...\n{log[-3000:]}")

    def wait_for_sidecar(self, timeout: float = 60) -> None:
        def healthy() -> bool:
            self._exited()
            mine = (s for s in dapr_list() if s["appId"] == self.app_id and self.app_port in (None, s["appPort"]))
            self.sidecar = next(mine, {})
            try:
                return bool(self.sidecar) and requests.get(self.sidecar_url("/v1.0/healthz"), timeout=2).ok
            except requests.RequestException:
                return False

        wait_for(healthy, timeout, f"the sidecar of `{self.command}`")

    def wait_until_ready(self, app_url: str, timeout: float = 60) -> None:
        """Sidecar and app both answer, and the sidecar has the app's subscriptions."""
        self.wait_for_sidecar(timeout)

        def ready() -> bool:
            self._exited()
            try:
                app_up = requests.get(f"{app_url}/openapi.json", timeout=2).ok
                return app_up and bool(self.metadata().get("subscriptions"))
            except requests.RequestException:
                return False

        wait_for(ready, timeout, f"the app of `{self.command}` and its subscriptions")

    def sidecar_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.sidecar['httpPort']}{path}"

    def metadata(self) -> dict[str, Any]:
        return requests.get(self.sidecar_url("/v1.0/metadata"), headers=self.auth, timeout=5).json()

    def get_state(self, store: str, key: str) -> Any:
        """A value through Dapr's state API, as an app would read it; None when absent."""
        response = requests.get(self.sidecar_url(f"/v1.0/state/{store}/{key}"), headers=self.auth, timeout=5)
        response.raise_for_status()
        return response.json() if response.content else None

    def stop(self) -> None:
        """SIGTERM to the CLI, which stops daprd and the app; SIGKILL whatever is left after 20 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in (self.sidecar.get("daprdPid"), self.sidecar.get("appPid")):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def dapr_list() -> list[dict[str, Any]]:
    """The sidecars on this machine's loopback. `dapr list` also shows those of Kubernetes pods
    running here, in network namespaces of their own, which may share the service's app id."""
    out = subprocess.run([str(DAPR_BIN / "dapr"), "list", "-o", "json"], capture_output=True, text=True).stdout
    try:
        return [sidecar for sidecar in json.loads(out) if _on_our_network(sidecar["daprdPid"])]
    except json.JSONDecodeError:
        return []  # "No Dapr instances found."


def _on_our_network(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
    except OSError:  # it has exited
        return False


@pytest.fixture(scope="module")
def service(dapr_env: dict[str, str]) -> Iterator[DaprRun]:
    """The README's service command, running for a module's stories."""
    run = DaprRun(SERVICE, dapr_env, "service")
    try:
        run.wait_until_ready(SERVICE_URL)
        yield run
    finally:
        run.stop()


ZIPKIN = "http://127.0.0.1:9411/api/v2"
WORKFLOW_SPAN = "orchestration||dapr.agents.assistant.workflow"


def trace_of_run(instance_id: str, zipkin: str = ZIPKIN, timeout: float = 30) -> list[dict[str, Any]]:
    """The Zipkin trace holding the workflow run `instance_id`, found the way the README says."""

    def found() -> list[dict[str, Any]] | None:
        query = {"annotationQuery": f"durabletask.task.instance_id={instance_id}", "limit": 10}
        traces = requests.get(f"{zipkin}/traces", params=query, timeout=5).json()
        # Spans arrive in batches: wait for the agent's last step and the sidecar's workflow span,
        # which daprd sends only after the run has ended. Names are matched whole: the sidecar's
        # create_orchestration||... span, sent when the run starts, also contains "orchestration||".
        last_spans = ("workflowactivity.dapr.agents.assistant.finalize_workflow", WORKFLOW_SPAN)
        done = [t for t in traces if all(any(s["name"] == n for s in t) for n in last_spans)]
        return done[0] if done else None

    return wait_for(found, timeout, f"the trace of run {instance_id} in Zipkin", interval=1)


class DaprRuns:
    """Starts a README `dapr run` command as often as a story asks; `stop_all` stops every one."""

    def __init__(self, command: str, name: str) -> None:
        self.command, self.name = command, name
        self.runs: list[DaprRun] = []

    def start(self, env: dict[str, str]) -> DaprRun:
        run = DaprRun(self.command, env, self.name)
        self.runs.append(run)
        run.wait_until_ready(SERVICE_URL)
        return run

    def stop_all(self) -> None:
        for run in self.runs:
            run.stop()


@pytest.fixture
def start_service(dapr_env: dict[str, str]) -> Iterator[Callable[[], DaprRun]]:
    """Starts the README's service command; every one started is stopped at the end."""
    services = DaprRuns(SERVICE, "service")
    yield lambda: services.start(dapr_env)
    services.stop_all()


@pytest.fixture
def outbox() -> Iterator[Path]:
    """outbox.txt, where durable_agent_tool.py's tool writes, empty for the story; a user's own is put
    back afterwards."""
    kept = OUTBOX.read_bytes() if OUTBOX.exists() and stat.S_ISREG(OUTBOX.stat().st_mode) else None
    OUTBOX.unlink(missing_ok=True)
    yield OUTBOX
    OUTBOX.unlink(missing_ok=True)
    if kept is not None:
        OUTBOX.write_bytes(kept)


def post_run(task: Any, service_url: str = SERVICE_URL) -> dict[str, str]:
    """The README's curl: POST /run, expecting 200 with an instance id and a status URL."""
    response = requests.post(f"{service_url}/run", json={"task": task}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_outcome(
    status_url: str, timeout: float = 60, interval: float = 0.2, service_url: str = SERVICE_URL
) -> dict[str, Any]:
    """Poll the status URL until the workflow has ended; return its last status."""

    def ended() -> dict[str, Any] | None:
        response = requests.get(f"{service_url}{status_url}", timeout=60)
        # 404: not scheduled yet. 503: the sidecar could not read the run just now (it says when to
        # ask again). A client retries both.
        if response.status_code in (404, 503):
            return None
        status = response.json()
        return status if status["runtime_status"] in ("COMPLETED", "FAILED", "TERMINATED") else None

    return wait_for(ended, timeout, f"{status_url} to end", interval)


def publish(task: str, env: dict[str, str], via_app: str = "durable-agent-service") -> subprocess.CompletedProcess[str]:
    """The README's `dapr publish`, with `{"task": task}` as the data, through the sidecar of `via_app`."""
    return publish_data(json.dumps({"task": task}), env, via_app)


def publish_data(
    data: str, env: dict[str, str], via_app: str = "durable-agent-service", raw: bool = False
) -> subprocess.CompletedProcess[str]:
    """The README's `dapr publish`, with `data` sent in place of its task; `raw`, docs/http-api.md's raw one."""
    arguments = shlex.split(PUBLISH_RAW if raw else PUBLISH)
    arguments[arguments.index("--publish-app-id") + 1] = via_app
    arguments[arguments.index("--data") + 1] = data
    return subprocess.run(arguments, cwd=ROOT, env=env, capture_output=True, text=True)


def post_with_key(task: str, key: str) -> requests.Response:
    headers = {"Idempotency-Key": key}
    return requests.post(f"{SERVICE_URL}/run", json={"task": task}, headers=headers, timeout=60)


def newest_entry(stream: str) -> str:
    """The id of the newest entry on a Redis stream; "0" for an empty or missing one."""
    newest = redis_cli("xrevrange", stream, "+", "-", "COUNT", "1").split()
    return newest[0] if newest else "0"


def all_delivered() -> bool:
    """The agent has taken, and acknowledged, the newest message on its topic's Redis stream."""
    newest = newest_entry("assistant.topic")
    groups = redis_cli("xinfo", "groups", "assistant.topic").split("name\n")[1:]  # one per app id
    fields = next(g for g in groups if g.startswith("durable-agent-service\n")).splitlines()
    group = dict(zip(fields[1::2], fields[2::2], strict=False))
    return group["pending"] == "0" and group["last-delivered-id"] == newest


def publish_cloudevent(service: DaprRun, event_id: str, task: str) -> None:
    """What a producer that sets its own CloudEvent id sends: the event, through Dapr's publish API."""
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": "tests",
        "type": "com.example.task",
        "datacontenttype": "application/json",
        "data": {"task": task},
    }
    published = requests.post(
        service.sidecar_url("/v1.0/publish/agent-pubsub/assistant.topic"),
        data=json.dumps(event),
        headers={"Content-Type": "application/cloudevents+json"},
        timeout=10,
    )
    assert published.status_code == 204, published.text


def answer_of(outcome: dict[str, Any]) -> str:
    """The agent's final answer from a completed run's status."""
    return json.loads(outcome["serialized_output"])["content"]


def instance_with_task(task: str) -> str | None:
    """The id of the service's run whose task is `task`, found in its Redis state; None if none yet."""
    keys = redis_cli("--scan", "--pattern", "durable-agent-service||assistant:_workflow_*").split()
    values = redis_batch([f"HGET {key} data" for key in keys]).decode(errors="replace").splitlines()
    instances = [key.rsplit("_workflow_", 1)[1] for key, value in zip(keys, values, strict=True) if task in value]
    assert len(instances) <= 1, f"the task ran {len(instances)} times: {instances}"
    return instances[0] if instances else None


def redis_batch(commands: list[str]) -> bytes:
    """Runs Redis commands in one redis-cli call (it reads them from stdin), one reply per line."""
    script = ("\n".join(commands) + "\n").encode()
    return subprocess.run(["redis-cli"], input=script, capture_output=True, check=True).stdout


def peak_rss_mb(pid: int) -> float:
    """The most memory process `pid` has held at once (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def calls_for(llm: LLMServer, task: str) -> int:
    """How many chat requests the LLM received that mention `task`: the price of running it."""
    return sum(1 for r in llm.state.chat_requests() if task in r.user_text)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failure, attach the tail of every `dapr run` log the test could have touched."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for run in DaprRun.started:
            if run.log_path.exists():
                report.sections.append((f"log of `{run.command}`", run.log()[-6000:]))
