"""The stack's two identities: the fleets' service account and the publisher's (training jobs).

Neither gets a project-wide role here. What each may do is granted on the model bucket only (``store.py``): the
fleet reads (and writes its own drain leases and heartbeats under ``_fleet/``), the publisher writes. See docs/gcp.md
"Identities and scopes".
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

# Service account ids: 6-30 of [a-z0-9-], starting with a letter, not ending with '-'.
_ACCOUNT_ID_MAX = 30


def account_id(prefix: str, suffix: str) -> str:
    """A valid, deterministic account id ``<prefix>-<suffix>``, shortened with a hash when the prefix is long."""
    slug = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-") or "mf"
    if not slug[0].isalpha():
        slug = f"mf-{slug}"
    room = _ACCOUNT_ID_MAX - len(suffix) - 1
    if len(slug) > room:
        tag = hashlib.sha256(prefix.encode()).hexdigest()[:4]
        slug = f"{slug[: room - 5].rstrip('-')}-{tag}"
    return f"{slug}-{suffix}"


@dataclass(frozen=True)
class ServiceAccountsArgs:
    project: str
    # Short prefix of the account ids (e.g. "mf-staging"); two stacks in one project must use different prefixes.
    id_prefix: str
    stack: str


class ServiceAccounts(pulumi.ComponentResource):
    """``fleet``: what the serving VMs run as. ``publisher``: what training jobs publish models as."""

    fleet_email: pulumi.Output[str]
    fleet_member: pulumi.Output[str]
    publisher_email: pulumi.Output[str]
    publisher_member: pulumi.Output[str]

    def __init__(self, name: str, args: ServiceAccountsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("modelfleet:gcp:ServiceAccounts", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.fleet = gcp.serviceaccount.Account(
            f"{name}-fleet",
            project=args.project,
            account_id=account_id(args.id_prefix, "fleet"),
            display_name=f"modelfleet {args.stack} serving VMs",
            description="TF Serving fleet VMs: read the model bucket, write drain leases and heartbeats under _fleet/, "
            "nothing else.",
            opts=child,
        )
        self.publisher = gcp.serviceaccount.Account(
            f"{name}-publisher",
            project=args.project,
            account_id=account_id(args.id_prefix, "publisher"),
            display_name=f"modelfleet {args.stack} model publisher",
            description="Training jobs: publish, label and prune models in the model bucket, nothing else.",
            opts=child,
        )
        self.fleet_email = self.fleet.email
        self.fleet_member = self.fleet.member
        self.publisher_email = self.publisher.email
        self.publisher_member = self.publisher.member
        self.register_outputs(
            {
                "fleet_email": self.fleet_email,
                "fleet_member": self.fleet_member,
                "publisher_email": self.publisher_email,
                "publisher_member": self.publisher_member,
            }
        )
