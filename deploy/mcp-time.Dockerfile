# The MCP time server of mcp/servers.yaml for a cluster: mcp-server-time speaks stdio only, and a
# sidecar there cannot start it (daprd's container has nothing but daprd), so mcp-proxy serves it over
# streamable HTTP on :8080/mcp, for the MCPServer resource in deploy/mcp-servers.yaml.
#   docker build -f deploy/mcp-time.Dockerfile -t <your registry>/mcp-time:1 .
# `make k8s-up` builds this same file with buildah on the agent image's Debian base.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

COPY requirements-mcp.txt requirements-mcp-proxy.txt /tmp/
# Two venvs that talk MCP over a pipe: the server needs mcp>=2, the proxy mcp<2.
RUN python3 -m venv /opt/server \
 && /opt/server/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements-mcp.txt \
 && python3 -m venv /opt/proxy \
 && /opt/proxy/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements-mcp-proxy.txt \
 && rm /tmp/requirements-mcp.txt /tmp/requirements-mcp-proxy.txt

USER 65532:65532
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
EXPOSE 8080
# --stateless: any replica answers any request, so the Service needs no session affinity.
CMD ["/opt/proxy/bin/mcp-proxy", "--host", "0.0.0.0", "--port", "8080", "--stateless", "--", \
     "/opt/server/bin/mcp-server-time", "--local-timezone", "UTC"]
