"""Bad input at POST /run: a clear 4xx, nothing else lost, and the service keeps serving."""

from __future__ import annotations

import collections
import itertools
import json
import re
import uuid
from typing import Any
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service_runner.task_checks import MAX_BODY_BYTES, MAX_TASK_BYTES
from service_runner.topic_door import dead_letter
from tests.conftest import (
    SERVICE_URL,
    TASK,
    DaprRun,
    answer_of,
    calls_for,
    instance_with_task,
    newest_entry,
    post_run,
    publish,
    publish_data,
    redis_cli,
    wait_for,
    wait_for_outcome,
)
from tests.llm_server import HAIKU, LLMServer

JSON = {"Content-Type": "application/json"}
DEAD_LETTER = dead_letter("assistant.topic")


def post(body: bytes | str, headers: dict[str, str] | None = None, path: str = "/run") -> requests.Response:
    data = body.encode() if isinstance(body, str) else body
    return requests.post(f"{SERVICE_URL}{path}", data=data, headers=JSON if headers is None else headers, timeout=30)


@pytest.mark.parametrize(
    ("body", "headers", "status", "detail"),
    [
        ("task=haiku", None, 400, "not JSON"),
        (b"\xff\xfe{}", None, 400, "not JSON"),
        ('["Write a haiku."]', None, 422, "must be a JSON object"),
        ("{}", None, 422, '"task" is required'),
        ('{"prompt": "Write a haiku."}', None, 422, '"task" is required'),
        ('{"task": 42}', None, 422, "must be a string"),
        ('{"task": null}', None, 422, "must be a string"),
        ('{"task": ""}', None, 422, '"task" is empty'),
        ('{"task": " \\n\\t "}', None, 422, '"task" is empty'),
        ('{"task": "haiku\\u0000"}', None, 422, "control characters"),
        ('{"task": "\\u001b[31mred"}', None, 422, "control characters"),
        ('{"task": "\\ud800"}', None, 422, "surrogate"),
        (json.dumps({"task": "x" * MAX_TASK_BYTES + "🐍"}), None, 413, f"longer than {MAX_TASK_BYTES} bytes"),
        (json.dumps({"task": "x" * 1024 * 1024}), None, 413, "larger than"),
        (b" " * (10 * 1024 * 1024), None, 413, f"larger than {MAX_BODY_BYTES} bytes"),
        (json.dumps({"task": TASK}), {"Content-Type": "text/plain"}, 415, "Content-Type: application/json"),
        (json.dumps({"task": TASK}), {}, 415, "Content-Type: application/json"),
        ('{"task": "x", "n": NaN}', None, 400, "NaN is not a JSON value"),
        ('{"task": "x", "n": -Infinity}', None, 400, "-Infinity is not a JSON value"),
        ('{"task": "x", "n": 1e999}', None, 400, "too large a number"),
        ("[" * 100_000 + "]" * 100_000, None, 400, "nested too deeply"),
        ('{"task": "x", "n": 1}', None, 422, 'unknown field "n"'),
        ('{"task": "x", "_message_metadata": {"id": "spoofed"}}', None, 422, 'unknown field "_message_metadata"'),
    ],
    ids=[
        "form-encoded",
        "not-utf8",
        "json-array",
        "no-task",
        "other-key",
        "task-number",
        "task-null",
        "empty-task",
        "blank-task",
        "nul",
        "escape-sequence",
        "lone-surrogate",
        "just-over-the-limit",
        "1MB-task",
        "10MB-body",
        "text-plain",
        "no-content-type",
        "nan",
        "infinity",
        "overflowing-number",
        "nested-100k-deep",
        "extra-field",
        "dapr-agents-field",
    ],
)
@pytest.mark.parametrize("path", ["/run", "/run/stream"])
def test_a_body_the_agent_cannot_run_gets_a_clear_4xx(
    service: DaprRun,
    llm: LLMServer,
    body: bytes | str,
    headers: dict[str, str] | None,
    status: int,
    detail: str,
    path: str,
) -> None:
    response = post(body, headers, path)

    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    assert llm.state.chat_requests() == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "detail"),
    [
        ("GET", "/agent/instances/0123456789abcdef0123456789abcdef", b"", 404, "not found"),
        ("GET", "/agent/instances/not%20an%20id", b"", 404, "no run has that id"),
        ("GET", "/agent/instances/" + "x" * 65, b"", 404, "no run has that id"),
        ("GET", "/agent/instances/0123456789abcdef0123456789abcdef/stream", b"", 404, "not found"),
        ("POST", "/agent/instances/0123456789abcdef0123456789abcdef/terminate", b"", 404, "no run has that id"),
        ("POST", "/agent/instances/0123456789abcdef0123456789abcdef/purge", b"", 404, "no run has that id"),
        ("POST", "/agent/instances/abc%7C%7Cdef/purge", b"", 404, "no run has that id"),
        ("POST", "/agent/instances/0123456789abcdef0123456789abcdef/terminate", b"{}", 400, "takes no body"),
        ("POST", "/agent/instances/0123456789abcdef0123456789abcdef/purge", b"x" * 400_000, 413, "larger than"),
        ("POST", "/run/input", b"{}", 404, "Not Found"),
        ("GET", "/hitl/approvals", b"", 404, "Not Found"),
        ("GET", "/run", b"", 405, "Method Not Allowed"),
    ],
    ids=[
        "status-unknown",
        "status-not-an-id",
        "status-id-too-long",
        "stream-unknown",
        "terminate-unknown",
        "purge-unknown",
        "purge-not-an-id",
        "terminate-with-body",
        "purge-huge-body",
        "input-not-mounted",
        "approvals-not-mounted",
        "run-by-get",
    ],
)
def test_each_route_of_a_run_answers_bad_requests_with_a_clear_4xx(
    service: DaprRun, llm: LLMServer, method: str, path: str, body: bytes, status: int, detail: str
) -> None:
    response = requests.request(method, f"{SERVICE_URL}{path}", data=body, headers=JSON, timeout=30)

    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    assert llm.state.chat_requests() == []


@pytest.mark.parametrize(
    ("key", "detail"),
    [("", "1 to 255 printable ASCII"), ("a b", "without spaces"), ("k" * 256, "1 to 255"), ("é", "printable ASCII")],
    ids=["empty", "space", "256-chars", "not-ascii"],
)
def test_a_bad_idempotency_key_gets_a_clear_400(service: DaprRun, llm: LLMServer, key: str, detail: str) -> None:
    response = post(json.dumps({"task": TASK}), {**JSON, "Idempotency-Key": key.encode().decode("latin-1")})

    assert response.status_code == 400, response.text
    assert detail in response.json()["detail"]
    assert llm.state.chat_requests() == []


@pytest.mark.parametrize(
    "task",
    [
        "Écris un haïku sur la programmation 🐍✨",
        "اكتب قصيدة هايكو عن البرمجة",  # right-to-left
        "שורה ראשונה\nשורה שנייה\tעם טאב",  # noqa: RUF001
        "\u202ereversed\u202c zero\u200bwidth \ufdfd",  # bidi override, zero-width space
        "x" * (MAX_TASK_BYTES - 4000) + "🐍" * 1000,  # exactly the limit: the snake is 4 bytes of UTF-8
    ],
    ids=["emoji", "arabic", "hebrew-newline-tab", "bidi-controls", "at-the-limit"],
)
def test_odd_but_valid_text_runs_normally_and_arrives_unchanged(service: DaprRun, llm: LLMServer, task: str) -> None:
    outcome = wait_for_outcome(post_run(task)["status_url"])

    assert outcome["runtime_status"] == "COMPLETED"
    assert json.loads(outcome["serialized_input"]) == {"task": task}
    assert answer_of(outcome) == HAIKU
    assert calls_for(llm, task) == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"task": json_values}).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"task": st.text(max_size=200)}).map(lambda v: json.dumps(v).encode()),
)


runnable_bodies = st.fixed_dictionaries(
    {"task": st.text(st.characters(categories=["L", "N", "P", "Zs", "So"]), min_size=1, max_size=100)}
).map(lambda v: json.dumps(v).encode())
idempotency_keys = st.none() | st.uuids().map(str) | st.text(max_size=300)
instance_ids = st.one_of(
    st.text(max_size=70),
    st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    st.sampled_from(["", ".", "..", "%2F", "a b", "x" * 65, "abc||def"]),
)
route_requests = st.one_of(
    st.tuples(st.just("POST"), st.sampled_from(["/run", "/run/stream"]), bodies | runnable_bodies, idempotency_keys),
    st.tuples(
        st.sampled_from(["GET", "POST", "DELETE"]),
        st.tuples(instance_ids, st.sampled_from(["", "/stream", "/terminate", "/purge"])).map(
            lambda p: f"/agent/instances/{quote(p[0], safe='')}{p[1]}"
        ),
        st.just(b"") | bodies,
        st.none(),
    ),
)


def test_a_fuzz_of_300_requests_to_every_route_gets_no_5xx_and_every_accepted_run_completes(
    service: DaprRun, llm: LLMServer
) -> None:
    before = post_run(TASK)
    accepted: list[tuple[str, Any]] = []
    rejected: collections.Counter[int] = collections.Counter()
    routes: collections.Counter[str] = collections.Counter()

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(request=route_requests)
    def door_holds(request: tuple[str, str, bytes, str | None]) -> None:
        method, path, body, key = request
        headers = {**JSON, **({"Idempotency-Key": key} if key is not None else {})}
        try:
            response = requests.request(method, f"{SERVICE_URL}{path}", data=body, headers=headers, timeout=60)
        except (UnicodeEncodeError, requests.exceptions.InvalidHeader):
            return  # a key requests itself refuses to send as a header: nothing reached the service
        routes[f"{method} {re.sub(r'/agent/instances/[^/]*', '/agent/instances/<id>', path)}"] += 1
        assert response.status_code < 500, (request, response.text)
        if response.status_code >= 400:
            # A header no HTTP parser takes (a control character in it) is refused before the app.
            http_parser = response.status_code == 400 and response.text == "Invalid HTTP request received."
            assert http_parser or response.json()["detail"], (request, response.text)
            rejected[response.status_code] += 1
        elif path == "/run":
            accepted.append((response.json()["status_url"], json.loads(body)["task"]))
        elif path == "/run/stream":
            assert '"type": "session_complete"' in response.text or "session_complete" in response.text, response.text

    door_holds()

    print(f"\nfuzz: {sum(routes.values())} requests by route {dict(routes)}; 4xx by status {dict(rejected)}")
    assert sum(routes.values()) >= 250
    assert accepted, "the fuzz sent no valid task; widen the strategy"
    for status_url, task in [(before["status_url"], TASK), *accepted]:
        outcome = wait_for_outcome(status_url, timeout=120)
        assert outcome["runtime_status"] == "COMPLETED", (task, outcome)
        assert json.loads(outcome["serialized_input"])["task"] == task


def test_a_binary_payload_goes_to_the_dead_letter_topic_and_the_stories_after_it_read_past_it(
    service: DaprRun, llm: LLMServer, dapr_env: dict[str, str]
) -> None:
    """Bytes that are not text, published raw through the sidecar's API; the dead-letter stories that
    follow run with them on the topic, as a user's stack may hold them."""
    dead_before = newest_entry(DEAD_LETTER)
    publish_url = service.sidecar_url("/v1.0/publish/agent-pubsub/assistant.topic?metadata.rawPayload=true")
    payload = b"\xff\xfe\x00 not text " + uuid.uuid4().bytes

    published = requests.post(
        publish_url, data=payload, headers={"Content-Type": "application/octet-stream"}, timeout=10
    )
    good_task = f"Write a haiku about bytes ({uuid.uuid4().hex[:8]})."
    good = publish(good_task, dapr_env)

    assert published.status_code == 204, published.text
    assert good.returncode == 0, good.stderr
    dead = wait_for(lambda: _dead_letters(after=dead_before), 30, "the binary message on the dead-letter topic")
    assert len(dead) == 1 and "\\xff\\xfe" in str(dead[0]), dead
    instance_id = wait_for(lambda: instance_with_task(good_task), 30, "a run for the good message")
    assert wait_for_outcome(f"/agent/instances/{instance_id}")["runtime_status"] == "COMPLETED"
    assert [r.user_text for r in llm.state.chat_requests() if "response_format" not in r.body] == [good_task]


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        ("Write a haiku.", "must be a JSON object"),
        ('["Write a haiku."]', "must be a JSON object"),
        ('{"prompt": "Write a haiku."}', '"task" is required'),
        ('{"task": 42}', '"task" is required'),
        ('{"task": ""}', '"task" is empty'),
        (json.dumps({"task": "x" * (MAX_TASK_BYTES + 1)}), f"longer than {MAX_TASK_BYTES} bytes"),
    ],
    ids=["plain-text", "json-array", "no-task", "task-number", "empty-task", "over-32KiB"],
)
def test_a_message_the_agent_cannot_run_goes_to_the_dead_letter_topic_and_the_next_one_runs(
    service: DaprRun, llm: LLMServer, dapr_env: dict[str, str], data: str, detail: str
) -> None:
    dead_before, log_before = newest_entry(DEAD_LETTER), len(service.log())

    bad = publish_data(data, dapr_env)
    good_task = f"Write a haiku about dead letters ({uuid.uuid4().hex[:8]})."
    good = publish(good_task, dapr_env)

    assert bad.returncode == 0 and good.returncode == 0, bad.stderr + good.stderr
    dead = wait_for(lambda: _dead_letters(after=dead_before), 30, "the message on the dead-letter topic")
    assert [event["data"] for event in dead] == [json.loads(data) if data.startswith(("[", "{")) else data]
    rejected = wait_for(
        lambda: [line for line in service.log().splitlines() if "Rejected message" in line and detail in line],
        10,
        "the rejection in the agent's log",
    )
    assert f"moved to {DEAD_LETTER}" in rejected[-1]
    assert max(len(line) for line in service.log()[log_before:].splitlines()) < 4096  # no payload dump
    instance_id = wait_for(lambda: instance_with_task(good_task), 30, "a run for the good message")
    assert wait_for_outcome(f"/agent/instances/{instance_id}")["runtime_status"] == "COMPLETED"
    assert [r.user_text for r in llm.state.chat_requests() if "response_format" not in r.body] == [good_task]


def _dead_letters(after: str) -> list[Any]:
    """The messages on the dead-letter topic's Redis stream since `after`, oldest first: CloudEvents,
    and raw payloads as they were published. Only those: earlier ones may be anything, binary too."""
    lines = redis_cli("xrange", DEAD_LETTER, f"({after}", "+").splitlines()
    return [_json_or_text(event) for field, event in itertools.pairwise(lines) if field == "data"]


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def test_a_raw_payload_the_agent_cannot_run_goes_to_the_dead_letter_topic(
    service: DaprRun, llm: LLMServer, dapr_env: dict[str, str]
) -> None:
    dead_before = newest_entry(DEAD_LETTER)
    data = json.dumps({"prompt": f"Write a haiku about raw mistakes ({uuid.uuid4().hex[:8]})."})
    published = publish_data(data, dapr_env, raw=True)

    assert "Event published successfully" in published.stdout, published.stdout + published.stderr
    dead = wait_for(lambda: _dead_letters(after=dead_before), 30, "the message on the dead-letter topic")
    assert dead == [json.loads(data)]
    assert "is required and must be a string; moved to assistant.topic.deadletter" in service.log()
    assert llm.state.chat_requests() == []
