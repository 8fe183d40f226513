"""modelfleet: this VM's liveness to its auto scaling group (AWS; docs/aws.md)."""

from __future__ import annotations

import sys
import time
import urllib.request
from typing import Any


def get(url: str, method: str = "GET", **headers: str) -> str:
    req = urllib.request.Request(url, method=method, headers=headers)  # noqa: S310
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
        return str(resp.read().decode())


def probe(url: str) -> bool:
    try:
        return get(url) is not None  # an error status raises
    except (OSError, ValueError):
        return False


class Reporter:
    def __init__(self, client: Any, instance: str, hook: str, failures: int) -> None:
        self.client, self.id, self.hook, self.failures = client, instance, hook, failures
        self.ready, self.failed = False, 0

    def step(self, live: bool) -> None:
        if not self.ready:
            self.ready = live and self.complete()
            return
        self.failed = 0 if live else self.failed + 1
        if self.failed >= self.failures:
            print("not live: Unhealthy", flush=True)
            self.client.set_instance_health(InstanceId=self.id, HealthStatus="Unhealthy", ShouldRespectGracePeriod=True)
            self.failed = 0

    def complete(self) -> bool:  # the launch hook: in service once live
        [vm] = self.client.describe_auto_scaling_instances(InstanceIds=[self.id])["AutoScalingInstances"]
        group, hook = vm["AutoScalingGroupName"], self.hook
        try:
            self.client.complete_lifecycle_action(
                LifecycleHookName=hook, AutoScalingGroupName=group, LifecycleActionResult="CONTINUE", InstanceId=self.id
            )
        except self.client.exceptions.ClientError as e:
            if e.response["Error"]["Code"] != "ValidationError":  # ValidationError: nothing pending
                raise
        return True


def main(url: str, hook: str, interval: str, failures: str) -> None:
    import boto3

    imds = "http://169.254.169.254/latest"
    token = get(f"{imds}/api/token", "PUT", **{"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    vm = get(f"{imds}/meta-data/instance-id", **{"X-aws-ec2-metadata-token": token})
    reporter = Reporter(boto3.client("autoscaling"), vm, hook, int(failures))
    while True:
        try:
            reporter.step(probe(url))
        except Exception as e:
            print(f"report failed: {e!r}", flush=True)
        time.sleep(float(interval))


if __name__ == "__main__":
    main(*sys.argv[1:])
