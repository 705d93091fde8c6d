"""What a runnable task is: the one rule every door applies, over HTTP or pub/sub.

dapr-agents schedules a workflow for any JSON object it is sent, even `{}`, and Dapr has no policy
for what an app's own routes or a streaming subscription accept, so this check lives in the app.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

# The agent prints each task, and `dapr run` stops reading an app's output at a line over 64 KiB,
# which freezes the agent; 32 KiB of UTF-8 keeps any task line well below that.
MAX_TASK_BYTES = 32 * 1024
# Room for a maximal task written with JSON's \uXXXX escapes (up to 12 bytes per character).
MAX_BODY_BYTES = 12 * MAX_TASK_BYTES


class BadTaskError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def check_body(body: bytes) -> None:
    """Raise BadTaskError unless `body` is JSON that passes check_payload."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadTaskError(400, f"the body is not JSON ({error})") from None
    check_payload(payload)


def check_payload(payload: Any) -> None:
    """Raise BadTaskError unless `payload` is an object whose `task` is text worth running."""
    if not isinstance(payload, dict):
        raise BadTaskError(422, 'the body must be a JSON object: {"task": "..."}')
    task = payload.get("task")
    if not isinstance(task, str):
        raise BadTaskError(422, '"task" is required and must be a string')
    if not task.strip():
        raise BadTaskError(422, '"task" is empty')
    if len(task.encode("utf-8", "surrogatepass")) > MAX_TASK_BYTES:
        raise BadTaskError(413, f'"task" is longer than {MAX_TASK_BYTES} bytes of UTF-8')
    if any(unicodedata.category(c) == "Cs" for c in task):
        raise BadTaskError(422, '"task" contains a lone UTF-16 surrogate, which is not text')
    if any(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in task):
        raise BadTaskError(422, '"task" contains control characters (only tab and newline are allowed)')
