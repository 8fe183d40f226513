"""The stack's own Docker Hub mirror on GCP: an Artifact Registry remote repository, readable by the fleet only.

The fleets pull TF Serving's image from ``<region>-docker.pkg.dev/<project>/<repository>/<Docker Hub path>``: on a
cache miss Artifact Registry fetches the image from Docker Hub once, and every later pull (each new VM, every
scale-out) is served from the repository, in the fleets' region, over Private Google Access (no NAT, no Docker Hub
rate limit per NAT address). The VMs log in with their service account's access token (``registry_login.py`` in the
agent bundle); ``roles/artifactregistry.reader`` on this repository is all they get (no project-wide role), and the
instances' ``devstorage`` access scope is enough to download from Artifact Registry.

Docker Hub is reached anonymously by Artifact Registry (its own, shared, rate limit applies to cache misses only);
authenticated upstream pulls (a Docker Hub token in Secret Manager) are not wired yet. docs/bootstrap.md
("TF Serving's image").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra.bootstrap import mirror_image

TYPE = "modelfleet:gcp:ImageRegistry"
READER_ROLE = "roles/artifactregistry.reader"
_REPOSITORY_ID_MAX = 63


def repository_host(location: str) -> str:
    """Docker's host for Artifact Registry repositories in ``location``: ``<location>-docker.pkg.dev``."""
    return f"{location}-docker.pkg.dev"


@dataclass(frozen=True)
class ImageRegistryArgs:
    project: str
    location: str  # the fleets' region
    repository_id: str  # lowercase letters, digits and '-', starting with a letter (e.g. "mf-staging-dockerhub")
    reader_members: Sequence[pulumi.Input[str]] = ()  # "serviceAccount:..." members that pull (the fleet)

    def __post_init__(self) -> None:
        rid = self.repository_id
        ok = 0 < len(rid) <= _REPOSITORY_ID_MAX and rid[0].isalpha() and rid[-1].isalnum()
        if not ok or any(not (c.islower() or c.isdigit() or c == "-") for c in rid):
            raise ValueError(f"repository_id {rid!r}: use a-z, 0-9 and '-', starting with a letter, at most 63")


class ImageRegistry(pulumi.ComponentResource):
    """``base``: ``<location>-docker.pkg.dev/<project>/<repository>``, the Docker Hub mirror's prefix."""

    repository_name: pulumi.Output[str]
    base: str
    ready: pulumi.Output[str]  # ``base``, once the repository and the readers' grants exist

    def __init__(self, name: str, args: ImageRegistryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.repository = gcp.artifactregistry.Repository(
            f"{name}-dockerhub",
            project=args.project,
            location=args.location,
            repository_id=args.repository_id,
            format="DOCKER",
            mode="REMOTE_REPOSITORY",
            description="modelfleet: Docker Hub mirror for the serving fleets (TF Serving's image)",
            remote_repository_config=gcp.artifactregistry.RepositoryRemoteRepositoryConfigArgs(
                description="Docker Hub",
                docker_repository=gcp.artifactregistry.RepositoryRemoteRepositoryConfigDockerRepositoryArgs(
                    public_repository="DOCKER_HUB",
                ),
            ),
            opts=child,
        )
        self.grants = [
            gcp.artifactregistry.RepositoryIamMember(
                f"{name}-reader{i}",
                project=args.project,
                location=args.location,
                repository=self.repository.repository_id,
                role=READER_ROLE,
                member=member,
                opts=child,
            )
            for i, member in enumerate(args.reader_members)
        ]
        self.base = f"{repository_host(args.location)}/{args.project}/{args.repository_id}"
        base = self.base
        self.repository_name = self.repository.name
        self.ready = pulumi.Output.all(self.repository.id, *(g.id for g in self.grants)).apply(lambda _: base)
        self.register_outputs({"repository_name": self.repository_name, "base": self.base, "ready": self.ready})

    def image(self, upstream: str) -> str:
        """``upstream`` (a Docker Hub reference, e.g. ``tensorflow/serving:2.20.0@sha256:...``) through this mirror."""
        return mirror_image(upstream, self.base)
