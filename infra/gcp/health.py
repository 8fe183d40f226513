"""The HTTP health checks on the agent's endpoints: readiness (``HEALTH_PATH``, the ALB in load_balancer.py: 200
only when the fleet's version is AVAILABLE in TF Serving, 503 while draining) and liveness (``LIVE_PATH``, autohealing
in fleet.py: 503 only for a VM that never got ready or whose agent or TF Serving is dead)."""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from infra.components import HealthCheck
from model_export.constants import AGENT_PORT, HEALTH_PATH


def agent_health_check(
    name: str, description: str, hc: HealthCheck, opts: pulumi.ResourceOptions, path: str = HEALTH_PATH
) -> gcp.compute.HealthCheck:
    return gcp.compute.HealthCheck(
        name,
        description=description,
        check_interval_sec=hc.interval_seconds,
        timeout_sec=hc.timeout_seconds,
        healthy_threshold=hc.healthy_threshold,
        unhealthy_threshold=hc.unhealthy_threshold,
        http_health_check=gcp.compute.HealthCheckHttpHealthCheckArgs(port=AGENT_PORT, request_path=path),
        log_config=gcp.compute.HealthCheckLogConfigArgs(enable=True),
        opts=opts,
    )
