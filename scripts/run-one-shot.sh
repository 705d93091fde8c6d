#!/usr/bin/env bash
# `make run`: the README's one-shot command. With no OPENAI_API_KEY it still runs end to end, on
# Dapr's conversation.echo component instead of a model, and says so before and after.
set -euo pipefail
cd "$(dirname "$0")/.."

resources=./resources
if [ -z "${OPENAI_API_KEY:-}" ]; then
  resources=.run/echo-resources
  rm -rf "$resources" && mkdir -p "$resources"
  cp resources/*.yaml "$resources/"
  cp config/llm-provider-echo.yaml "$resources/llm-provider.yaml"
fi

no_key_notice() {
  [ -z "${OPENAI_API_KEY:-}" ] || return 0
  cat <<'NOTICE'
--------------------------------------------------------------------------------
No OPENAI_API_KEY: this run uses Dapr's conversation.echo component, which answers
with the prompt it was sent. Everything else (workflow, state, tracing) is real.
For a real haiku:   export OPENAI_API_KEY=sk-...        then `make run` again
or any OpenAI-compatible server (Ollama, vLLM, LM Studio):
  export OPENAI_API_KEY=unused OPENAI_BASE_URL=http://localhost:11434/v1 OPENAI_MODEL=llama3.2
--------------------------------------------------------------------------------
NOTICE
}

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

no_key_notice
started=$(date +%s)
status=0
# AGENT_TRACING (from the Makefile) goes to the app only; the sidecar sends its spans every 200 ms,
# so that they reach Zipkin before it stops (README, "The one-shot").
# shellcheck disable=SC2086  # AGENT_TRACING is a list of NAME=value words
OTEL_BSP_SCHEDULE_DELAY=200 dapr run --app-id durable-agent-minimal --resources-path "$resources" \
  --dapr-listen-addresses 127.0.0.1 --log-level error -- env ${AGENT_TRACING:-} python durable_agent_minimal.py \
  || status=$?
no_key_notice
where_to_look
exit "$status"
