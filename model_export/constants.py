"""Names and ports that cross layers (agent, bootstrap, load balancers, client). Defined here once."""

from __future__ import annotations

# TF Serving's own ports, as the official image runs it.
TFS_GRPC_PORT = 8500
TFS_REST_PORT = 8501
# The modelfleet agent's HTTP port: load balancers health-check it.
AGENT_PORT = 8080
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
# TF Serving's Prometheus endpoint (served on the REST port when monitoring is enabled).
TFS_METRICS_PATH = "/monitoring/prometheus/metrics"

# Labels in the manifest and the fleet roles that serve them.
STABLE = "stable"
CANARY = "canary"
ROLES = (STABLE, CANARY)
