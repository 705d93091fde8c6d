# Every target is listed by `make help`. Versions live in versions.env and requirements.txt.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
# .venv/bin/dapr is the project's Dapr CLI on its own runtime in .dapr/ (scripts/setup.sh).
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# dapr-agents' own spans, sent to the same Zipkin as the sidecar's; for the app only (docs/observability.md).
export AGENT_TRACING := OTEL_SDK_DISABLED=false OTEL_TRACING_ENABLED=true OTEL_TRACES_EXPORTER=zipkin OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:9411

.PHONY: help setup up down status run serve serve-tool serve-mcp test lint bench images k8s-up k8s-down k8s-status k8s-test

# Targets that set up first say only what they install or build, not what is already in place.
run serve serve-tool serve-mcp test bench images: export SETUP_QUIET := 1

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: ## Install Python deps, Dapr (built from Go modules), the local model, PostgreSQL, Redis, Zipkin, Chromium (idempotent)
	@scripts/setup.sh

up: ## Start PostgreSQL, Redis, placement, scheduler, Zipkin, the local model (reusing yours from `dapr init`; OWN_STACK=1: never)
	@scripts/stack.sh up

down: ## Stop what `make up` started
	@scripts/stack.sh down

status: ## Show whether each local service answers
	@scripts/stack.sh status

run: setup up ## The one-shot: the agent writes a haiku through a durable workflow (no key: the local model)
	@scripts/run-one-shot.sh

serve: setup up ## Serve the agent on :8001 (POST /run) and on pub/sub topic assistant.topic
	@scripts/which-model.sh
	dapr run --app-id durable-agent-service --resources-path ./resources --dapr-listen-addresses 127.0.0.1 --metrics-port 9090 -p 8001 --log-level warn -- env $(AGENT_TRACING) python durable_agent_service.py

serve-tool: setup up ## Serve the agent with a tool that runs only after a human approves it (docs/tool-and-approval.md)
	@scripts/which-model.sh
	dapr run --app-id durable-agent-tool --resources-path ./resources --dapr-listen-addresses 127.0.0.1 --metrics-port 9090 -p 8001 --log-level warn -- env $(AGENT_TRACING) python durable_agent_tool.py

serve-mcp: setup up ## Serve the agent with the tools of the MCP servers in mcp/servers.yaml (docs/mcp.md)
	@scripts/which-model.sh
	dapr run --app-id durable-agent-mcp --resources-path ./resources --resources-path ./mcp --dapr-listen-addresses 127.0.0.1 --metrics-port 9090 -p 8001 --log-level warn -- env $(AGENT_TRACING) python durable_agent_mcp.py

test: setup lint ## Lint, then everything on the real stack: up (its own), pytest, down (down also on failure)
	@OWN_STACK=1 scripts/stack.sh up
	@status=0; $(VENV)/bin/python -m pytest $(PYTEST_ARGS) || status=$$?; scripts/stack.sh down; exit $$status

bench: setup up ## Measure what durability costs: writes bench/RESULTS.md and bench/latency.png
	$(VENV)/bin/python bench/bench.py

images: setup up ## Run the one-shot and screenshot it and its Zipkin trace into images/
	@scripts/images.sh

lint: ## ruff on the Python code
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

k8s-up: ## Build (cached) and start a one-node Kubernetes with Dapr's control plane (docs/kubernetes.md)
	@nice -n 19 k8s/build.sh
	@k8s/cluster.sh up

k8s-down: ## Stop that cluster and remove everything it left: processes, mounts, network, state
	@k8s/cluster.sh down

k8s-status: ## Show the cluster's processes, node and pods, and check it is kept inside this machine
	@k8s/cluster.sh status

k8s-test: ## Test the running cluster (API, node, Dapr, a sidecar), then the agent deployed from deploy/ on it
	@scripts/setup.sh python >/dev/null
	$(VENV)/bin/python -m pytest k8s/tests -rP $(PYTEST_ARGS)
