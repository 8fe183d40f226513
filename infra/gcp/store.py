"""The model store: a hardened GCS bucket, who may read and write it, and the agent wheel the VMs install from it.

Roles are granted on the bucket only (never on the project):
- readers (the fleets' service account): ``roles/storage.objectViewer`` = ``storage.objects.get`` + ``.list``,
  all the agent does (conditional GETs of manifests, listing and downloading versions, fetching its wheel).
- publishers (training jobs): ``roles/storage.objectUser`` (create, read, overwrite, delete objects: publishing
  writes new files, replaces ``manifest.json`` under a generation precondition (a replace needs
  ``storage.objects.delete``), prune deletes). ``Store.check()`` probes the bucket with a one-object listing, so
  no bucket-level permission (``storage.buckets.get``) is needed by either. The grant holds under an IAM condition
  (``publisher_condition``) for every name except those under ``<store prefix>/_agent/``
  (``model_export.layout.AGENT_PREFIX``): the agent wheel every VM installs (and whatever else the deploying
  identity puts there for the boot) is written only by whoever runs `pulumi up`. Listing is a request on the bucket
  (``projects/_/buckets/<bucket>``), which the condition admits.
- lease writers (the fleets' service account again): ``roles/storage.objectUser`` under an IAM condition on the
  object name, ``<store prefix>/_fleet/`` only (``model_export.layout.FLEET_PREFIX``): the objects the VMs write
  themselves, drain-slot leases (``_fleet/<fleet>/drain/<slot>.json``, created and overwritten under generation
  preconditions, ``modelfleet.agent.lease``) and heartbeats (``_fleet/<fleet>/status/<instance>.json``, one overwrite
  per VM every 30 s by default). Nothing else is writable to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra.agent_package import AgentWheelFile
from model_export.layout import AGENT_PREFIX, FLEET_PREFIX

READER_ROLES = ("roles/storage.objectViewer",)
PUBLISHER_ROLES = ("roles/storage.objectUser",)
LEASE_WRITER_ROLE = "roles/storage.objectUser"  # create + overwrite (a replace needs objects.delete), in _fleet/ only


def fleet_objects_prefix(store_prefix: str) -> str:
    """Where the fleets' VMs may write (drain leases, heartbeats): ``<store prefix>/_fleet/`` (or ``_fleet/`` at the
    bucket's root)."""
    return "/".join(part for part in (store_prefix, FLEET_PREFIX) if part) + "/"


def lease_condition(bucket_name: str, store_prefix: str) -> str:
    """The IAM condition (CEL) that limits a grant to the objects under ``fleet_objects_prefix``."""
    return f'resource.name.startsWith("projects/_/buckets/{bucket_name}/objects/{fleet_objects_prefix(store_prefix)}")'


def agent_objects_prefix(store_prefix: str) -> str:
    """Where the deploying identity puts what the VMs install at boot: ``<store prefix>/_agent/`` (or ``_agent/``)."""
    return "/".join(part for part in (store_prefix, AGENT_PREFIX) if part) + "/"


def publisher_condition(bucket_name: str, store_prefix: str) -> str:
    """The IAM condition (CEL) that keeps a grant off the objects under ``agent_objects_prefix``. Object names in
    conditions are ``projects/_/buckets/<bucket>/objects/<name>`` (IAM Conditions, resource attributes); conditions
    on a bucket's objects need uniform bucket-level access, which the bucket has."""
    agent = f"projects/_/buckets/{bucket_name}/objects/{agent_objects_prefix(store_prefix)}"
    return f'!resource.name.startsWith("{agent}")'


@dataclass(frozen=True)
class ModelStoreArgs:
    bucket_name: str
    location: str  # the fleets' region: no cross-region transfer when VMs download models
    noncurrent_version_days: int
    kms_key: str | None = None
    deletion_protection: bool = False
    reader_members: Sequence[pulumi.Input[str]] = ()  # "serviceAccount:..." members that may only read
    publisher_members: Sequence[pulumi.Input[str]] = ()  # members that publish, label and prune
    lease_writer_members: Sequence[
        pulumi.Input[str]
    ] = ()  # members that write under <prefix>/_fleet/ only (the fleets: drain leases, heartbeats)
    agent_wheel: AgentWheelFile | None = None
    store_prefix: str = ""  # the wheel goes to <store_prefix>/_agent/<sha256>/<wheel name>


class ModelStore(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    bucket_url: pulumi.Output[str]
    agent_wheel_object: pulumi.Output[str] | None

    def __init__(self, name: str, args: ModelStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("modelfleet:gcp:ModelStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.bucket = gcp.storage.Bucket(
            f"{name}-bucket",
            name=args.bucket_name,
            location=args.location.upper(),
            storage_class="STANDARD",
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            # Every overwrite (manifest.json) and delete (prune) keeps a noncurrent copy for the grace period.
            versioning=gcp.storage.BucketVersioningArgs(enabled=True),
            lifecycle_rules=[
                gcp.storage.BucketLifecycleRuleArgs(
                    action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                    condition=gcp.storage.BucketLifecycleRuleConditionArgs(
                        days_since_noncurrent_time=args.noncurrent_version_days,
                        with_state="ARCHIVED",
                    ),
                ),
            ],
            encryption=(gcp.storage.BucketEncryptionArgs(default_kms_key_name=args.kms_key) if args.kms_key else None),
            force_destroy=False,
            deletion_policy="PREVENT" if args.deletion_protection else None,
            opts=child,
        )
        self.grants: list[gcp.storage.BucketIAMMember] = []
        for i, member in enumerate(args.reader_members):
            for role in READER_ROLES:
                self.grants.append(
                    gcp.storage.BucketIAMMember(
                        f"{name}-reader{i}-{role.rsplit('.', 1)[-1].lower()}",
                        bucket=self.bucket.name,
                        role=role,
                        member=member,
                        opts=child,
                    )
                )
        for i, member in enumerate(args.publisher_members):
            for role in PUBLISHER_ROLES:
                # A new name, not a changed condition on the earlier unconditional grant: a changed condition would
                # replace that grant (and a protected stack refuses replacements). The new grant is created while the
                # program runs, the earlier one deleted after it, so publishers keep their access throughout.
                self.grants.append(
                    gcp.storage.BucketIAMMember(
                        f"{name}-publisher{i}-{role.rsplit('.', 1)[-1].lower()}-no-agent",
                        bucket=self.bucket.name,
                        role=role,
                        member=member,
                        condition=gcp.storage.BucketIAMMemberConditionArgs(
                            title="modelfleet store, not the agent artefacts",
                            description="Publishers write the models; only the deploying identity writes _agent/",
                            expression=publisher_condition(args.bucket_name, args.store_prefix),
                        ),
                        opts=child,
                    )
                )

        for i, member in enumerate(args.lease_writer_members):
            self.grants.append(
                gcp.storage.BucketIAMMember(
                    f"{name}-lease-writer{i}",
                    bucket=self.bucket.name,
                    role=LEASE_WRITER_ROLE,
                    member=member,
                    # The title and description predate heartbeats (the expression covers them: all of _fleet/).
                    # They stay as they are: a changed condition is a changed binding (replaced), for no gain.
                    condition=gcp.storage.BucketIAMMemberConditionArgs(
                        title="modelfleet fleet leases only",
                        description="Drain-slot leases of the serving fleets (modelfleet.agent.lease)",
                        expression=lease_condition(args.bucket_name, args.store_prefix),
                    ),
                    opts=child,
                )
            )

        self.agent_wheel_object = None
        if args.agent_wheel is not None:
            wheel = gcp.storage.BucketObject(
                f"{name}-agent-wheel",
                bucket=self.bucket.name,
                name=args.agent_wheel.key(args.store_prefix),
                source=pulumi.FileAsset(str(args.agent_wheel.path)),
                content_type="application/zip",
                # Content-addressed: a new agent is a new object. Keep the old ones, so a VM created from a template
                # that is still being replaced can fetch the wheel it was told to (docs/bootstrap.md).
                opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True),
            )
            self.wheel = wheel
            self.agent_wheel_object = wheel.output_name

        self.bucket_name = self.bucket.name
        self.bucket_url = self.bucket.url
        self.register_outputs(
            {
                "bucket_name": self.bucket_name,
                "bucket_url": self.bucket_url,
                "agent_wheel_object": self.agent_wheel_object,
            }
        )
