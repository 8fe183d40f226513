"""The model store on S3: a private, versioned, encrypted bucket, plus the agent wheel the fleet VMs install.

Who may read or write it is `infra/aws/iam.py`'s business; this module only builds the bucket and its own guards
(public access block, owner-enforced ownership, default encryption, TLS-only bucket policy, lifecycle). Design notes:
docs/aws.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.agent_package import AgentWheelFile
from infra.components import store_uri
from infra.naming import normalize

TYPE = "modelfleet:aws:ModelStore"
# Incomplete multipart uploads (a publish that died half-way) are aborted after this many days.
ABORT_MULTIPART_DAYS = 7
_BUCKET_PREFIX_MAX = 37  # S3's bucket_prefix limit (63 minus the provider's unique suffix)
# A lifecycle rule for every object: a filter with an explicit empty prefix. An empty `filter {}` is deprecated by the
# provider ("Invalid Attribute Combination ... will be an error in a future version", terraform-provider-aws#41710,
# #42714); both mean the whole bucket to S3.
WHOLE_BUCKET = aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix="")


@dataclass(frozen=True)
class ModelStoreArgs:
    prefix: str  # models live under s3://<bucket>/<prefix>/; "" = the bucket root
    noncurrent_version_days: int  # overwritten / deleted objects are removed for good after this many days
    bucket_name: str | None = None  # None: a unique name derived from bucket_prefix
    bucket_prefix: str = "modelfleet-"
    kms_key_arn: str | None = None  # None: S3-managed keys (SSE-S3, AES256)
    protect: bool = False  # Pulumi `protect` on the bucket (deletionProtection)
    agent_wheel: AgentWheelFile | None = None  # uploaded to <prefix>/_agent/<sha256>/<wheel name>
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.noncurrent_version_days < 1:
            raise ValueError(f"noncurrent_version_days must be 1 or more, got {self.noncurrent_version_days}")
        if self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise ValueError(f"prefix {self.prefix!r} must not start or end with '/'")


def bucket_prefix_for(stack: str) -> str:
    """A valid S3 ``bucket_prefix`` naming the stack: lowercase, [a-z0-9-], at most 37 characters."""
    slug = normalize(f"modelfleet-{stack}")
    return slug[: _BUCKET_PREFIX_MAX - 1].rstrip("-") + "-"


def tls_only_policy(bucket_arn: str) -> dict[str, Any]:
    """Bucket policy: refuse any request that is not HTTPS, or that uses TLS older than 1.2."""
    resources = [bucket_arn, f"{bucket_arn}/*"]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": resources,
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
            {
                "Sid": "DenyOutdatedTls",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": resources,
                "Condition": {"NumericLessThan": {"s3:TlsVersion": "1.2"}},
            },
        ],
    }


class ModelStore(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]
    store_uri: pulumi.Output[str]  # exactly what `modelfleet publish --store` takes
    agent_wheel_uri: pulumi.Output[str] | None
    agent_wheel_sha256: str | None

    def __init__(self, name: str, args: ModelStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        self.bucket = bucket = self._bucket(name, args)
        public_access, ownership = self._access_guards(name, bucket)
        encryption = self._encryption(name, args, bucket)
        self._history(name, args, bucket)
        self._tls_only(name, bucket, public_access)

        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn
        prefix = args.prefix
        self.store_uri = bucket.bucket.apply(lambda b: store_uri("s3", b, prefix))
        self.agent_wheel_uri = None
        self.agent_wheel_sha256 = None
        if args.agent_wheel is not None:
            self.agent_wheel_uri = self._agent_wheel(
                name, args, args.agent_wheel, depends_on=[encryption, ownership, public_access]
            )
            self.agent_wheel_sha256 = args.agent_wheel.sha256

        outputs: dict[str, Any] = {
            "bucket_name": self.bucket_name,
            "bucket_arn": self.bucket_arn,
            "store_uri": self.store_uri,
        }
        if self.agent_wheel_uri is not None:
            outputs["agent_wheel_uri"] = self.agent_wheel_uri
            outputs["agent_wheel_sha256"] = self.agent_wheel_sha256
        self.register_outputs(outputs)

    def _bucket(self, name: str, args: ModelStoreArgs) -> aws.s3.Bucket:
        tags = {**args.tags, "Name": f"{name}-bucket"}
        return aws.s3.Bucket(
            f"{name}-bucket",
            bucket=args.bucket_name,
            bucket_prefix=None if args.bucket_name else args.bucket_prefix,
            force_destroy=False,
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
        )

    def _access_guards(
        self, name: str, bucket: aws.s3.Bucket
    ) -> tuple[aws.s3.BucketPublicAccessBlock, aws.s3.BucketOwnershipControls]:
        """No public access of any kind; the bucket owner owns every object (ACLs off)."""
        child = pulumi.ResourceOptions(parent=self)
        public_access = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access",
            bucket=bucket.bucket,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        ownership = aws.s3.BucketOwnershipControls(
            f"{name}-ownership",
            bucket=bucket.bucket,
            rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
            opts=child,
        )
        return public_access, ownership

    def _encryption(
        self, name: str, args: ModelStoreArgs, bucket: aws.s3.Bucket
    ) -> aws.s3.BucketServerSideEncryptionConfiguration:
        if args.kms_key_arn:
            by_default = aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                sse_algorithm="aws:kms", kms_master_key_id=args.kms_key_arn
            )
        else:
            by_default = aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                sse_algorithm="AES256"
            )
        return aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption",
            bucket=bucket.bucket,
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=by_default,
                    # S3 Bucket Keys cut KMS requests (and their cost) by ~99%; meaningless for AES256.
                    bucket_key_enabled=bool(args.kms_key_arn),
                )
            ],
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _history(self, name: str, args: ModelStoreArgs, bucket: aws.s3.Bucket) -> None:
        """Versioning, and the lifecycle that ends noncurrent versions and aborted uploads."""
        versioning = aws.s3.BucketVersioning(
            f"{name}-versioning",
            bucket=bucket.bucket,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
            opts=pulumi.ResourceOptions(parent=self),
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-lifecycle",
            bucket=bucket.bucket,
            rules=[
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire-noncurrent-versions",
                    status="Enabled",
                    filter=WHOLE_BUCKET,
                    noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                        noncurrent_days=args.noncurrent_version_days
                    ),
                    # Once its noncurrent versions are gone, a delete marker (from `prune`) is removed too.
                    expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(expired_object_delete_marker=True),
                ),
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="abort-incomplete-multipart-uploads",
                    status="Enabled",
                    filter=WHOLE_BUCKET,
                    abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                        days_after_initiation=ABORT_MULTIPART_DAYS
                    ),
                ),
            ],
            # Noncurrent-version rules need versioning to be on first.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[versioning]),
        )

    def _tls_only(self, name: str, bucket: aws.s3.Bucket, public_access: aws.s3.BucketPublicAccessBlock) -> None:
        aws.s3.BucketPolicy(
            f"{name}-tls-only",
            bucket=bucket.bucket,
            policy=bucket.arn.apply(lambda arn: json.dumps(tls_only_policy(arn))),
            # S3 refuses a bucket policy while a public-access-block update is in flight.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[public_access]),
        )

    def _agent_wheel(
        self, name: str, args: ModelStoreArgs, wheel: AgentWheelFile, depends_on: list[pulumi.Resource]
    ) -> pulumi.Output[str]:
        """Upload the agent wheel; its URI is built from the uploaded object, so no VM is told of it too early."""
        bucket = self.bucket
        prefix = args.prefix
        key = wheel.key(prefix)
        obj = aws.s3.BucketObjectv2(
            f"{name}-agent-wheel",
            bucket=bucket.bucket,
            key=key,
            source=pulumi.FileAsset(str(wheel.path)),
            content_type="application/octet-stream",
            checksum_algorithm="SHA256",
            tags={"modelfleet-agent-sha256": wheel.sha256},
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=depends_on,
                # A new wheel gets a new key (its hash is in it): keep the old object, so launching from a
                # previous launch template version (a manual rollback) still finds the wheel it names.
                retain_on_delete=True,
            ),
        )
        return pulumi.Output.all(bucket.bucket, obj.key).apply(lambda v: f"s3://{v[0]}/{v[1]}")
