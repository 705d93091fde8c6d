"""What a runnable task is: the one rule every door applies, over HTTP or pub/sub.

dapr-agents schedules a workflow for any JSON object it is sent, even `{}`, and Dapr has no policy
for what an app's own routes or a streaming subscription accept, so this check lives in the app.
"""

from __future__ import annotations

import json
import math
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


def parse_json(body: bytes) -> Any:
    """`body` as JSON, strictly as RFC 8259 has it: no NaN or Infinity, which Python would accept
    and the sidecar would not, and no number too large to be one."""
    try:
        return json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as error:
        raise BadTaskError(400, f"the body is not JSON ({error})") from None
    except RecursionError:
        raise BadTaskError(400, "the body is not JSON this service reads (nested too deeply)") from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"{text} is too large a number")
    return number


def check_body(body: bytes) -> None:
    """Raise BadTaskError unless `body` is JSON that passes check_payload."""
    check_payload(parse_json(body))


def check_payload(payload: Any) -> None:
    """Raise BadTaskError unless `payload` is {"task": <text worth running>} and nothing else.

    Other fields would reach the workflow's input, where dapr-agents reads fields of its own
    (`_message_metadata` among them): a caller gets to set none of them.
    """
    if not isinstance(payload, dict):
        raise BadTaskError(422, 'the body must be a JSON object: {"task": "..."}')
    task = payload.get("task")
    if not isinstance(task, str):
        raise BadTaskError(422, '"task" is required and must be a string')
    if unknown := sorted(set(payload) - {"task"}):
        raise BadTaskError(422, f'unknown field {json.dumps(unknown[0])}: the body takes only "task"')
    if not task.strip():
        raise BadTaskError(422, '"task" is empty')
    if len(task.encode("utf-8", "surrogatepass")) > MAX_TASK_BYTES:
        raise BadTaskError(413, f'"task" is longer than {MAX_TASK_BYTES} bytes of UTF-8')
    if any(unicodedata.category(c) == "Cs" for c in task):
        raise BadTaskError(422, '"task" contains a lone UTF-16 surrogate, which is not text')
    if any(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in task):
        raise BadTaskError(422, '"task" contains control characters (only tab and newline are allowed)')
