"""Who may touch the model store: the fleet's instance role (read, plus what the VMs write themselves under
``_fleet/``: drain-slot leases and heartbeats) and the publisher policy (write); and what the fleet's VMs may tell
their auto scaling groups (their own health).

The policy documents are plain functions of plain strings, so tests can read them without Pulumi. The store's are
scoped to the store prefix (the fleet's writes to ``<prefix>/_fleet/`` only); none grants ``s3:DeleteObjectVersion``
(history ends only through the lifecycle rule). See docs/aws.md ("Store access", "Health: readiness and liveness").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from model_export.layout import AGENT_PREFIX, FLEET_PREFIX

TYPE = "modelfleet:aws:StoreAccess"
SESSION_MANAGER_POLICY = "AmazonSSMManagedInstanceCore"


def partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if "-gov-" in region:
        return "aws-us-gov"
    return "aws"


def s3_service_host(region: str) -> str:
    """The `kms:ViaService` value for S3 in ``region``."""
    return f"s3.{region}.amazonaws.com.cn" if region.startswith("cn-") else f"s3.{region}.amazonaws.com"


def _objects(bucket_arn: str, prefix: str) -> str:
    return f"{bucket_arn}/{prefix}/*" if prefix else f"{bucket_arn}/*"


def _list_prefix(bucket_arn: str, prefix: str) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "Sid": "ListStorePrefix",
        "Effect": "Allow",
        "Action": "s3:ListBucket",
        "Resource": bucket_arn,
    }
    if prefix:
        statement["Condition"] = {"StringLike": {"s3:prefix": [f"{prefix}/*"]}}
    return statement


def _kms(key_arn: str, region: str, actions: list[str]) -> dict[str, Any]:
    return {
        "Sid": "UseStoreKeyThroughS3",
        "Effect": "Allow",
        "Action": actions,
        "Resource": key_arn,
        "Condition": {"StringEquals": {"kms:ViaService": s3_service_host(region)}},
    }


def fleet_read_policy(bucket_arn: str, prefix: str, region: str, kms_key_arn: str | None = None) -> dict[str, Any]:
    """The fleet may list the store prefix and read objects under it; nothing else in S3."""
    statements = [
        _list_prefix(bucket_arn, prefix),
        {
            "Sid": "ReadStoreObjects",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": _objects(bucket_arn, prefix),
        },
    ]
    if kms_key_arn:
        statements.append(_kms(kms_key_arn, region, ["kms:Decrypt"]))
    return {"Version": "2012-10-17", "Statement": statements}


def fleet_lease_policy(bucket_arn: str, prefix: str, region: str, kms_key_arn: str | None = None) -> dict[str, Any]:
    """The fleet may create and overwrite the objects its VMs write under ``<prefix>/_fleet/*``, and nothing else:
    drain-slot leases (``_fleet/<fleet>/drain/<slot>.json``; conditional puts need nothing more than
    ``s3:PutObject``) and heartbeats (``_fleet/<fleet>/status/<instance>.json``, one put per VM every 30 s by
    default). Releases overwrite and heartbeats are overwritten in place, so no delete."""
    where = f"{prefix}/{FLEET_PREFIX}" if prefix else FLEET_PREFIX
    statements: list[dict[str, Any]] = [
        {
            "Sid": "WriteFleetLeasesAndHeartbeats",
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": f"{bucket_arn}/{where}/*",
        }
    ]
    if kms_key_arn:
        statements.append(_kms(kms_key_arn, region, ["kms:GenerateDataKey"]))
    return {"Version": "2012-10-17", "Statement": statements}


def fleet_health_policy(group_arns: Sequence[str]) -> dict[str, Any]:
    """A fleet VM reports its own liveness to its group (``SetInstanceHealth``) and completes the group's launch
    lifecycle hook (``CompleteLifecycleAction``): on the stack's groups only. ``DescribeAutoScalingInstances`` (which
    group is mine?) supports no resource-level permission, hence ``*``; it only reads."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReportHealthToOwnGroups",
                "Effect": "Allow",
                "Action": ["autoscaling:SetInstanceHealth", "autoscaling:CompleteLifecycleAction"],
                "Resource": sorted(group_arns),
            },
            {
                "Sid": "FindOwnGroup",
                "Effect": "Allow",
                "Action": "autoscaling:DescribeAutoScalingInstances",
                "Resource": "*",
            },
        ],
    }


# What a publisher may do to objects under the prefix, and may not do under ``<prefix>/_agent/``.
PUBLISHER_WRITES = ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")


def publisher_policy(bucket_arn: str, prefix: str, region: str, kms_key_arn: str | None = None) -> dict[str, Any]:
    """Publish, label, promote, roll back and prune: conditional puts, reads, deletes (delete markers) under the
    prefix, and listing the prefix (which is also how ``Store.check()`` probes the bucket). An explicit deny keeps
    publishers from writing or deleting ``<prefix>/_agent/*``, what the VMs install at boot (the agent wheel): only
    the identity that runs `pulumi up` writes there. An explicit deny wins over any allow, this policy's or another
    one the publisher's role has."""
    statements: list[dict[str, Any]] = [_list_prefix(bucket_arn, prefix)]
    statements.append(
        {
            "Sid": "WriteStoreObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject", *PUBLISHER_WRITES],
            "Resource": _objects(bucket_arn, prefix),
        }
    )
    agent = f"{prefix}/{AGENT_PREFIX}" if prefix else AGENT_PREFIX
    statements.append(
        {
            "Sid": "DenyAgentArtefactWrites",
            "Effect": "Deny",
            "Action": list(PUBLISHER_WRITES),
            "Resource": f"{bucket_arn}/{agent}/*",
        }
    )
    if kms_key_arn:
        statements.append(_kms(kms_key_arn, region, ["kms:Decrypt", "kms:GenerateDataKey"]))
    return {"Version": "2012-10-17", "Statement": statements}


def service_trust(service: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
    }


def principals_trust(principal_arns: tuple[str, ...]) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": list(principal_arns)}, "Action": "sts:AssumeRole"}],
    }


@dataclass(frozen=True)
class StoreAccessArgs:
    bucket_arn: pulumi.Input[str]
    prefix: str
    region: str
    kms_key_arn: str | None = None
    iam_path: str = "/"  # e.g. /modelfleet/<stack>/: groups the stack's roles and policies in IAM
    # Attach AmazonSSMManagedInstanceCore so operators reach the (SSH-less, private) VMs with Session Manager.
    session_manager: bool = True
    # IAM principals (role ARNs) allowed to assume a publisher role; empty = no role, only the managed policy.
    publisher_trusted_principals: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.iam_path.startswith("/") and self.iam_path.endswith("/")):
            raise ValueError(f"iam_path {self.iam_path!r} must start and end with '/'")
        for arn in self.publisher_trusted_principals:
            if not arn.startswith("arn:"):
                raise ValueError(f"publisher_trusted_principals: {arn!r} is not an IAM principal ARN")


class StoreAccess(pulumi.ComponentResource):
    fleet_role_arn: pulumi.Output[str]
    fleet_role_name: pulumi.Output[str]
    instance_profile_arn: pulumi.Output[str]
    publisher_policy_arn: pulumi.Output[str]
    publisher_role_arn: pulumi.Output[str] | None

    def __init__(self, name: str, args: StoreAccessArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        self._name = name
        child = pulumi.ResourceOptions(parent=self)
        bucket_arn = pulumi.Output.from_input(args.bucket_arn)
        prefix, region, key = args.prefix, args.region, args.kms_key_arn

        fleet_role = aws.iam.Role(
            f"{name}-fleet",
            description="modelfleet serving VMs: read the model store, write leases and heartbeats under _fleet/",
            path=args.iam_path,
            assume_role_policy=json.dumps(service_trust("ec2.amazonaws.com")),
            tags=args.tags,
            opts=child,
        )
        read_store = aws.iam.RolePolicy(
            f"{name}-fleet-read-store",
            role=fleet_role.name,
            policy=bucket_arn.apply(lambda arn: json.dumps(fleet_read_policy(arn, prefix, region, key))),
            opts=child,
        )
        write_leases = aws.iam.RolePolicy(
            f"{name}-fleet-write-leases",
            role=fleet_role.name,
            policy=bucket_arn.apply(lambda arn: json.dumps(fleet_lease_policy(arn, prefix, region, key))),
            opts=child,
        )
        if args.session_manager:
            aws.iam.RolePolicyAttachment(
                f"{name}-fleet-session-manager",
                role=fleet_role.name,
                policy_arn=f"arn:{partition(region)}:iam::aws:policy/{SESSION_MANAGER_POLICY}",
                opts=child,
            )
        profile = aws.iam.InstanceProfile(
            f"{name}-fleet",
            role=fleet_role.name,
            path=args.iam_path,
            tags=args.tags,
            opts=child,
        )

        publisher = aws.iam.Policy(
            f"{name}-publisher",
            description="modelfleet publishers (training jobs, CI): write the model store",
            path=args.iam_path,
            policy=bucket_arn.apply(lambda arn: json.dumps(publisher_policy(arn, prefix, region, key))),
            tags=args.tags,
            opts=child,
        )
        self.publisher_role_arn = None
        if args.publisher_trusted_principals:
            publisher_role = aws.iam.Role(
                f"{name}-publisher",
                description="modelfleet publishers: assume to write the model store",
                path=args.iam_path,
                assume_role_policy=json.dumps(principals_trust(args.publisher_trusted_principals)),
                tags=args.tags,
                opts=child,
            )
            aws.iam.RolePolicyAttachment(
                f"{name}-publisher",
                role=publisher_role.name,
                policy_arn=publisher.arn,
                opts=child,
            )
            self.publisher_role_arn = publisher_role.arn

        self.fleet_role_arn = fleet_role.arn
        self.fleet_role_name = fleet_role.name
        # Carries the store policies as dependencies: no VM launches with a profile that cannot read the store yet.
        self.instance_profile_arn = pulumi.Output.all(profile.arn, read_store.id, write_leases.id).apply(
            lambda v: str(v[0])
        )
        self.publisher_policy_arn = publisher.arn
        outputs: dict[str, Any] = {
            "fleet_role_arn": self.fleet_role_arn,
            "fleet_role_name": self.fleet_role_name,
            "instance_profile_arn": self.instance_profile_arn,
            "publisher_policy_arn": self.publisher_policy_arn,
        }
        if self.publisher_role_arn is not None:
            outputs["publisher_role_arn"] = self.publisher_role_arn
        self.register_outputs(outputs)

    def allow_health_reports(self, group_arns: Sequence[pulumi.Input[str]]) -> aws.iam.RolePolicy:
        """Let the fleet's VMs report their liveness to these groups (created once the groups exist: their ARNs)."""
        return aws.iam.RolePolicy(
            f"{self._name}-fleet-report-health",
            role=self.fleet_role_name,
            policy=pulumi.Output.all(*group_arns).apply(lambda arns: json.dumps(fleet_health_policy(arns))),
            opts=pulumi.ResourceOptions(parent=self),
        )
