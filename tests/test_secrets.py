"""The OpenAI key comes from the environment and leaks nowhere: no log, no stored value, no span."""

from __future__ import annotations

import subprocess
from pathlib import Path

import requests

from tests.conftest import FAKE_KEY, ROOT, TASK, DaprRun, post_run, psql, redis_batch, redis_cli, wait_for_outcome
from tests.llm_server import LLMServer


def test_the_api_key_is_used_but_appears_in_no_file_log_stored_value_or_span(service: DaprRun, llm: LLMServer) -> None:
    assert wait_for_outcome(post_run(TASK)["status_url"])["runtime_status"] == "COMPLETED"
    # The key did reach the model, so its absence below means something.
    assert any(r.headers.get("Authorization") == f"Bearer {FAKE_KEY}" for r in llm.state.chat_requests())

    tracked = subprocess.run(["git", "grep", "-l", FAKE_KEY, "--", ":!tests"], cwd=ROOT, capture_output=True, text=True)
    assert tracked.stdout == "", f"key found in tracked files: {tracked.stdout}"

    logs = [*(ROOT / ".run").rglob("*.log"), *(ROOT / ".dapr").rglob("*.log")]
    assert logs, "no logs found to check"
    assert [str(p) for p in logs if FAKE_KEY in Path(p).read_text(errors="replace")] == []

    assert FAKE_KEY.encode() not in _every_redis_value()
    holding_the_key = "SELECT count(*) FROM state WHERE position(convert_to(:'p1', 'UTF8') in value) > 0"
    assert psql(holding_the_key, FAKE_KEY) == [["0"]]
    assert int(psql(holding_the_key, TASK)[0][0]) > 0  # the same query finds what a run did write there

    for service_name in requests.get("http://127.0.0.1:9411/api/v2/services", timeout=5).json():
        traces = requests.get(
            "http://127.0.0.1:9411/api/v2/traces", params={"serviceName": service_name, "limit": 10000}, timeout=30
        )
        assert FAKE_KEY not in traces.text, f"key found in a span of {service_name}"


def _every_redis_value() -> bytes:
    """Every value in Redis, raw: hashes (state stores), streams (pub/sub) and strings."""
    keys = redis_cli("--scan").split()
    commands = []
    for key, kind in zip(keys, redis_batch([f"TYPE {key}" for key in keys]).decode().split(), strict=True):
        commands.append({"hash": f"HGETALL {key}", "stream": f"XRANGE {key} - +", "string": f"GET {key}"}.get(kind, ""))
    return redis_batch([c for c in commands if c])
