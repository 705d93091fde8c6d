#!/usr/bin/env bash
# `make run`: the README's one-shot command, then where to look. The LLM is the one OPENAI_API_KEY (and
# OPENAI_BASE_URL, OPENAI_MODEL) name; without a key, the local model `make up` serves, which
# .venv/bin/dapr points the llm-provider component at.
set -euo pipefail
cd "$(dirname "$0")/.."
# The run's workflow id and trace, from Zipkin: the newest workflow span of this app since we started.
where_to_look() {
  local lookback_ms=$(( ($(date +%s) - started + 5) * 1000 )) found="" _
  local query="serviceName=durable-agent-minimal&spanName=orchestration%7C%7Cdapr.agents.assistant.workflow"
  for _ in $(seq 30); do  # the sidecar sends spans in batches
    found=$(curl -fsS "http://127.0.0.1:9411/api/v2/traces?$query&lookback=$lookback_ms&limit=1" | python -c '
import json, sys
spans = [s for trace in json.load(sys.stdin) for s in trace if s["name"].startswith("orchestration||")]
if spans:
    print(spans[0]["tags"]["durabletask.task.instance_id"], spans[0]["traceId"])
') && [ -n "$found" ] && break
    sleep 0.5
  done
  if [ -z "$found" ]; then
    echo "Traces: http://localhost:9411/zipkin/?serviceName=durable-agent-minimal"
    return
  fi
  read -r instance_id trace_id <<<"$found"
  echo "Workflow id: $instance_id"
  echo "Its trace:   http://localhost:9411/zipkin/traces/$trace_id"
}

scripts/which-model.sh
started=$(date +%s)
status=0
# The sidecar sends its spans every 200 ms, so that they reach Zipkin before it stops (README, "The
# one-shot"). dapr-agents' own tracing stays off, as in the README's command: it adds spans the
# service's trace shows (docs/observability.md) and, in a one-shot, only warnings nobody can act on.
OTEL_BSP_SCHEDULE_DELAY=200 dapr run --app-id durable-agent-minimal --resources-path ./resources \
  --dapr-listen-addresses 127.0.0.1 --log-level error -- python durable_agent_minimal.py || status=$?
where_to_look
exit "$status"
