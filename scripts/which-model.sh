#!/usr/bin/env bash
# Says which model will answer, as `make run` and `make serve*` start: the one OPENAI_API_KEY (and
# OPENAI_BASE_URL, OPENAI_MODEL) name, or without a key the local model `make up` serves.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=../config/local-model.env
source config/local-model.env

if [ -n "${OPENAI_API_KEY:-}" ]; then
  echo "Model: ${OPENAI_MODEL:-gpt-4o-mini (resources/llm-provider.yaml)}, at ${OPENAI_BASE_URL:-OpenAI}"
else
  echo "Model: $LOCAL_MODEL_NAME, on this machine (llama.cpp on 127.0.0.1:$LOCAL_MODEL_PORT): no OPENAI_API_KEY is set."
  echo "       A 135M-parameter model: expect a short, odd haiku. For OpenAI: export OPENAI_API_KEY=sk-..."
fi
