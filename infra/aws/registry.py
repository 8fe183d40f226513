"""The stack's own Docker Hub mirror on AWS: an ECR pull-through cache rule, pullable by the fleet's role only.

The fleets pull TF Serving's image from ``<account>.dkr.ecr.<region>.amazonaws.com/<prefix>/<Docker Hub path>``. On
the first pull ECR creates the repository ``<prefix>/<path>`` and imports the image from Docker Hub; later pulls are
served by ECR in the fleets' region (re-checked upstream at most once a day per tag). ECR's layer downloads come from
S3, through the VPC's S3 gateway endpoint.

Docker Hub is an upstream that needs authentication: ECR reads the credential from a Secrets Manager secret whose
name starts with ``ecr-pullthroughcache/`` (``{"username": ..., "accessToken": ...}``), in the rule's account and
region. This component creates that secret from a Docker Hub user and access token given as a Pulumi secret (or
takes the ARN of an existing one). Without either there is no rule, and the stack pulls from Docker Hub directly.

The fleet's role gets, on ``repository/<prefix>/*`` only: the pull actions, ``ecr:BatchImportUpstreamImage`` (import
on a cache miss) and ``ecr:CreateRepository`` (first pull of an image); plus ``ecr:GetAuthorizationToken``, which has
no resource-level permission. docs/bootstrap.md ("TF Serving's image").
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.aws.iam import partition
from infra.bootstrap import mirror_image

TYPE = "modelfleet:aws:ImageRegistry"
DOCKER_HUB_UPSTREAM = "registry-1.docker.io"
CREDENTIAL_NAME_PREFIX = "ecr-pullthroughcache/"  # ECR only uses secrets named so
PULL_ACTIONS = ("ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer")
CACHE_ACTIONS = ("ecr:BatchImportUpstreamImage", "ecr:CreateRepository")
# ECR's rule for a pull-through cache prefix: 2-30 characters.
_PREFIX = re.compile(r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$")


def registry_host(account_id: str, region: str) -> str:
    suffix = ".cn" if region.startswith("cn-") else ""
    return f"{account_id}.dkr.ecr.{region}.amazonaws.com{suffix}"


def fleet_pull_policy(region: str, account_id: str, prefix: str) -> dict[str, Any]:
    """The fleet may log in to ECR and pull (and, on a cache miss, import) the images under ``<prefix>/`` only."""
    repositories = f"arn:{partition(region)}:ecr:{region}:{account_id}:repository/{prefix}/*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "LogInToEcr", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
            {
                "Sid": "PullThroughDockerHubCache",
                "Effect": "Allow",
                "Action": [*PULL_ACTIONS, *CACHE_ACTIONS],
                "Resource": repositories,
            },
        ],
    }


@dataclass(frozen=True)
class DockerHubCredential:
    """Docker Hub's user and access token (read-only scope is enough), or an existing secret's ARN."""

    username: pulumi.Input[str] | None = None
    access_token: pulumi.Input[str] | None = None  # wrapped as a Pulumi secret here
    secret_arn: pulumi.Input[str] | None = None  # arn:...:secret:ecr-pullthroughcache/...

    def __post_init__(self) -> None:
        given = (self.username is not None, self.access_token is not None)
        if self.secret_arn is not None and any(given):
            raise ValueError("give a Docker Hub username and access token, or an existing secret's ARN, not both")
        if self.secret_arn is None and not all(given):
            raise ValueError("a Docker Hub credential needs both the username and the access token")


@dataclass(frozen=True)
class ImageRegistryArgs:
    region: str
    prefix: str  # the ECR repository prefix of the cache, e.g. "mf-prod-docker-hub"
    fleet_role_name: pulumi.Input[str]
    credential: DockerHubCredential
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (2 <= len(self.prefix) <= 30 and _PREFIX.match(self.prefix)):
            raise ValueError(f"prefix {self.prefix!r}: 2-30 of a-z, 0-9 and . _ - / (ECR's pull-through cache rule)")


class ImageRegistry(pulumi.ComponentResource):
    """``ready``: ``<account>.dkr.ecr.<region>.amazonaws.com/<prefix>``, once the rule and the fleet's grant exist."""

    host: pulumi.Output[str]
    ready: pulumi.Output[str]
    credential_arn: pulumi.Output[str]

    def __init__(self, name: str, args: ImageRegistryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.credential_arn = self._credential(name, args)
        self.rule = aws.ecr.PullThroughCacheRule(
            f"{name}-docker-hub",
            ecr_repository_prefix=args.prefix,
            upstream_registry_url=DOCKER_HUB_UPSTREAM,
            credential_arn=self.credential_arn,
            opts=child,
        )
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOptions(parent=self)).account_id
        region, prefix = args.region, args.prefix
        self.pull = aws.iam.RolePolicy(
            f"{name}-fleet-pull",
            role=args.fleet_role_name,
            policy=account.apply(lambda acct: json.dumps(fleet_pull_policy(region, acct, prefix))),
            opts=child,
        )
        self.host = account.apply(lambda acct: registry_host(acct, region))
        self.ready = pulumi.Output.all(self.host, self.rule.id, self.pull.id).apply(lambda v: f"{v[0]}/{prefix}")
        self.register_outputs({"host": self.host, "ready": self.ready, "credential_arn": self.credential_arn})

    def _credential(self, name: str, args: ImageRegistryArgs) -> pulumi.Output[str]:
        given = args.credential
        if given.secret_arn is not None:
            return pulumi.Output.from_input(given.secret_arn)
        child = pulumi.ResourceOptions(parent=self)
        self.secret = aws.secretsmanager.Secret(
            f"{name}-docker-hub",
            name_prefix=f"{CREDENTIAL_NAME_PREFIX}{args.prefix}-",
            description="modelfleet: Docker Hub credential of the ECR pull-through cache (TF Serving's image)",
            tags=dict(args.tags),
            opts=child,
        )
        token: pulumi.Output[str] = pulumi.Output.secret(given.access_token)  # type: ignore[arg-type]
        body = pulumi.Output.all(given.username, token).apply(
            lambda v: json.dumps({"username": v[0], "accessToken": v[1]})
        )
        version = aws.secretsmanager.SecretVersion(
            f"{name}-docker-hub",
            secret_id=self.secret.id,
            secret_string=body,  # secret: it carries the token
            opts=child,
        )
        # The rule reads the secret when it pulls: name it only once the value is in.
        return pulumi.Output.all(self.secret.arn, version.id).apply(lambda v: v[0])

    def image(self, upstream: str) -> pulumi.Output[str]:
        """``upstream`` (a Docker Hub reference) through the cache: an Output that waits for the rule and the grant."""
        return self.ready.apply(lambda base: mirror_image(upstream, base))
