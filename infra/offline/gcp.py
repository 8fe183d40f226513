"""GCP's offline answers: the attributes the Google provider computes (self links, emails, IP addresses) and its
invoke results, shaped like the real provider's, for `infra.offline.evaluate`.

- ``invokes``: the GCP stack calls no invoke today (Google's load balancer source ranges are constants in
  ``infra/gcp/load_balancer.py``), so it is empty; an invoke added later fails with a message pointing here.
- ``resources``: resource type token -> ``answer(name, inputs) -> extra state`` (camelCase keys), merged over the
  inputs the offline provider echoes back. Only attributes the provider *computes* belong here.

The program never sets ``project`` on a resource (the explicit ``gcp.Provider`` carries it), so each evaluation's
answers remember the project and region its provider was given (in `_Run`, built per evaluation) and the self links
use them, as the real provider would.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from infra.offline import Answer, Answers, Placeholders

COMPUTE = "https://www.googleapis.com/compute/v1"


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def _name(name: str, inputs: Mapping[str, Any]) -> str:
    """The resource's cloud name: explicit, from ``name_prefix`` (provider-generated suffix), or the logical name
    (Pulumi's auto-naming adds a random suffix for real; the plan keeps the logical name readable)."""
    if inputs.get("name"):
        return str(inputs["name"])
    if inputs.get("namePrefix"):
        return f"{inputs['namePrefix']}{_digest(name)[:26]}"
    return name


def _ip(net: str, name: str) -> str:
    return f"{net}.{int(_digest(name)[:4], 16) % 250 + 2}"


class _Run:
    """One evaluation's provider settings (the stack's explicit provider registers before the resources using it)."""

    def __init__(self) -> None:
        self.project = "offline-project"
        self.region = "offline-region1"
        self.placeholders = Placeholders()  # see `Answers.placeholders`

    def provider(self, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        if isinstance(inputs.get("project"), str) and inputs["project"]:
            self.project = inputs["project"]
        if isinstance(inputs.get("region"), str) and inputs["region"]:
            self.region = inputs["region"]
        return {}

    def _project(self, inputs: Mapping[str, Any]) -> str:
        return str(inputs.get("project") or self.project)

    def _region(self, inputs: Mapping[str, Any]) -> str:
        return str(inputs.get("region") or self.region)

    def global_(self, collection: str) -> Answer:
        def answer(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
            cloud_name = _name(name, inputs)
            return {
                "name": cloud_name,
                "selfLink": f"{COMPUTE}/projects/{self._project(inputs)}/global/{collection}/{cloud_name}",
            }

        return answer

    def regional(self, collection: str) -> Answer:
        def answer(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
            cloud_name = _name(name, inputs)
            region = self._region(inputs)
            link = f"{COMPUTE}/projects/{self._project(inputs)}/regions/{region}/{collection}/{cloud_name}"
            return {"name": cloud_name, "selfLink": link, "region": region}

        return answer

    def instance_template(self, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        state = self.global_("instanceTemplates")(name, inputs)
        state["selfLinkUnique"] = f"{state['selfLink']}?uniqueId={int(_digest('unique', name)[:12], 16)}"
        return state

    def instance_group_manager(self, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        state = self.regional("instanceGroupManagers")(name, inputs)
        base = f"{COMPUTE}/projects/{self._project(inputs)}/regions/{self._region(inputs)}"
        state["instanceGroup"] = f"{base}/instanceGroups/{state['name']}"
        return state

    def global_address(self, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {
            **self.global_("addresses")(name, inputs),
            "address": self.placeholders.made_up(_ip("203.0.113", name)),
        }  # TEST-NET-3

    def address(self, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {
            **self.regional("addresses")(name, inputs),
            "address": self.placeholders.made_up(_ip("198.51.100", name)),
        }  # TEST-NET-2

    def service_account(self, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        email = f"{inputs['accountId']}@{self._project(inputs)}.iam.gserviceaccount.com"
        return {
            "email": email,
            "member": f"serviceAccount:{email}",
            "name": f"projects/{self._project(inputs)}/serviceAccounts/{email}",
            "uniqueId": str(int(_digest(email)[:15], 16)),
        }

    def certificate(self, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        state = self.global_("sslCertificates")(name, inputs)
        managed = inputs.get("managed") or {}
        domains = managed.get("domains", [])
        return {**state, "certificateId": int(_digest(name)[:8], 16), "subjectAlternativeNames": domains}


def _bucket(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    bucket = _name(name, inputs)
    return {"name": bucket, "url": f"gs://{bucket}", "selfLink": f"https://www.googleapis.com/storage/v1/b/{bucket}"}


def _bucket_object(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    path = f"{inputs['bucket']}/o/{inputs['name']}"
    return {
        "selfLink": f"https://www.googleapis.com/storage/v1/b/{path}",
        "mediaLink": f"https://storage.googleapis.com/download/storage/v1/b/{path}?alt=media",
        "outputName": inputs["name"],
    }


def answers() -> Answers:
    """A fresh set of GCP answers for one evaluation."""
    run = _Run()
    return Answers(
        placeholders=run.placeholders,
        invokes={},
        resources={
            "pulumi:providers:gcp": run.provider,
            "gcp:serviceaccount/account:Account": run.service_account,
            "gcp:storage/bucket:Bucket": _bucket,
            "gcp:storage/bucketObject:BucketObject": _bucket_object,
            "gcp:compute/network:Network": run.global_("networks"),
            "gcp:compute/subnetwork:Subnetwork": run.regional("subnetworks"),
            "gcp:compute/router:Router": run.regional("routers"),
            "gcp:compute/firewall:Firewall": run.global_("firewalls"),
            "gcp:compute/instanceTemplate:InstanceTemplate": run.instance_template,
            "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager": run.instance_group_manager,
            "gcp:compute/regionAutoscaler:RegionAutoscaler": run.regional("autoscalers"),
            "gcp:compute/healthCheck:HealthCheck": run.global_("healthChecks"),
            "gcp:compute/backendService:BackendService": run.global_("backendServices"),
            "gcp:compute/httpHealthCheck:HttpHealthCheck": run.global_("httpHealthChecks"),
            "gcp:compute/targetPool:TargetPool": run.regional("targetPools"),
            "gcp:compute/securityPolicy:SecurityPolicy": run.global_("securityPolicies"),
            "gcp:compute/uRLMap:URLMap": run.global_("urlMaps"),
            "gcp:compute/targetHttpProxy:TargetHttpProxy": run.global_("targetHttpProxies"),
            "gcp:compute/targetHttpsProxy:TargetHttpsProxy": run.global_("targetHttpsProxies"),
            "gcp:compute/sSLPolicy:SSLPolicy": run.global_("sslPolicies"),
            "gcp:compute/managedSslCertificate:ManagedSslCertificate": run.certificate,
            "gcp:compute/globalAddress:GlobalAddress": run.global_address,
            "gcp:compute/address:Address": run.address,
            "gcp:compute/globalForwardingRule:GlobalForwardingRule": run.global_("forwardingRules"),
            "gcp:compute/forwardingRule:ForwardingRule": run.regional("forwardingRules"),
        },
    )
