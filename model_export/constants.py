"""Names and ports that cross layers (agent, bootstrap, load balancers, client). Defined here once."""

from __future__ import annotations

# TF Serving's own ports, as the official image runs it.
TFS_GRPC_PORT = 8500
TFS_REST_PORT = 8501
# The modelfleet agent's HTTP port: load balancers health-check it.
AGENT_PORT = 8080
HEALTH_PATH = "/healthz"  # readiness: the load balancers route on it (503 while nothing is served, or draining)
LIVE_PATH = "/livez"  # liveness: what replaces VMs acts on it (GCP autohealing, the AWS VM's own health report)
METRICS_PATH = "/metrics"
# TF Serving's Prometheus endpoint (served on the REST port when monitoring is enabled).
TFS_METRICS_PATH = "/monitoring/prometheus/metrics"

# Labels in the manifest and the fleet roles that serve them.
STABLE = "stable"
CANARY = "canary"
ROLES = (STABLE, CANARY)

# The TF Serving image a fleet runs unless the stack pins another (a release tag: never `latest`).
TFS_IMAGE_REPOSITORY = "tensorflow/serving"
TFS_VERSION = "2.20.0"
DEFAULT_TFS_IMAGE = f"{TFS_IMAGE_REPOSITORY}:{TFS_VERSION}"
# TF Serving's REST port as the agent on the same VM reaches it.
LOCAL_TFS_URL = f"http://127.0.0.1:{TFS_REST_PORT}"
# The ModelServerConfig the agent writes into its model root and TF Serving re-reads.
MODEL_CONFIG_NAME = "models.config"
# How often an agent checks the manifest (one conditional GET), and TF Serving re-reads the agent's config file.
AGENT_POLL_SECONDS = 10
MODEL_CONFIG_POLL_SECONDS = 5
# Seconds one store request may take in the agent, the SDK's retries included (``MODELFLEET_STORE_TIMEOUT``, 30 s by
# default elsewhere): a black-holed store fails one poll within this, and the agent backs off and keeps serving.
AGENT_STORE_TIMEOUT_SECONDS = 10

# How a VM switches a model to a new version (``modelfleet agent --switch``, stack key ``versionSwitch``): ``overlap``
# loads the new version beside the old one (TF Serving's own order: twice the memory for a moment), ``drain`` takes the
# VM out of the load balancer, unloads the old version, then loads the new one, ``auto`` drains only when both would not
# fit the memory budget. At most ``maxDrainingPercent`` of a fleet's VMs (at least one) drain at once.
VERSION_SWITCHES = ("overlap", "drain", "auto")
DEFAULT_VERSION_SWITCH = "auto"
DEFAULT_MAX_DRAINING_PERCENT = 25
# How long a load balancer takes to stop sending to a VM whose health check fails (its interval x unhealthy threshold):
# what a draining agent waits after it answers 503. The stacks pass their own value; this is AWS's (10 s x 3).
DEFAULT_DRAIN_WAIT_SECONDS = 30
