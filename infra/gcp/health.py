"""The HTTP health check on the agent's health endpoint, shared by autohealing (fleet.py) and the ALB
(load_balancer.py): 200 only when the fleet's version is AVAILABLE in TF Serving."""

from __future__ import annotations

import pulumi
import pulumi_gcp as gcp

from infra.components import HealthCheck
from model_export.constants import AGENT_PORT, HEALTH_PATH


def agent_health_check(
    name: str, description: str, hc: HealthCheck, opts: pulumi.ResourceOptions
) -> gcp.compute.HealthCheck:
    return gcp.compute.HealthCheck(
        name,
        description=description,
        check_interval_sec=hc.interval_seconds,
        timeout_sec=hc.timeout_seconds,
        healthy_threshold=hc.healthy_threshold,
        unhealthy_threshold=hc.unhealthy_threshold,
        http_health_check=gcp.compute.HealthCheckHttpHealthCheckArgs(port=AGENT_PORT, request_path=HEALTH_PATH),
        log_config=gcp.compute.HealthCheckLogConfigArgs(enable=True),
        opts=opts,
    )
