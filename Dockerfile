# The agents' image: durable_agent_service.py (its command), durable_agent_tool.py, durable_agent_mcp.py,
# their runner.
# Their sidecars, components and configuration come from Dapr on the cluster (deploy/, README "On Kubernetes").
#   docker build -t <your registry>/durable-agent:1 .
# BASE is any Debian or Ubuntu image with Python 3.11 and its venv module; `make k8s-up` builds
# this same file with buildah on a base made from Debian's packages by mmdebstrap.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

WORKDIR /app
COPY requirements.txt .
RUN python3 -m venv /opt/agent \
 && /opt/agent/bin/pip install --no-cache-dir --disable-pip-version-check -r requirements.txt
COPY durable_agent_service.py durable_agent_tool.py durable_agent_mcp.py ./
COPY service_runner/ service_runner/

# A numeric user, so that Kubernetes' runAsNonRoot can check it without a passwd lookup.
USER 65532:65532
ENV PATH=/opt/agent/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    APP_PORT=8001
CMD ["python", "durable_agent_service.py"]
