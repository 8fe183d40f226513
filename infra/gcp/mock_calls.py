"""Offline answers for this cloud's provider invokes and computed resource attributes, used by `infra/mocks.py`
(for `modelfleet plan` and the tests). Keep each answer shaped like the real provider's.

Shape:
- ``CALLS``: invoke token (``gcp:compute/getZones:getZones``) -> ``fake(token, args) -> result`` (camelCase keys).
  The GCP stack calls no invoke today (Google's load balancer source ranges are constants in
  ``infra/gcp/load_balancer.py``), so it is empty; an invoke added later fails with a message pointing here.
- ``STATE``: resource type token -> ``fake(name, inputs) -> extra state`` (camelCase keys), merged over the inputs
  the mock echoes back. Only attributes the provider *computes* belong here: self links, emails, IP addresses.

The program never sets ``project`` on a resource (the explicit ``gcp.Provider`` carries it), so the provider fake
remembers the project it was given and the self links below use it, as the real provider would.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from infra.mocks import Fake

COMPUTE = "https://www.googleapis.com/compute/v1"
_provider: dict[str, str] = {"project": "mock-project", "region": "mock-region1"}


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def _project(inputs: Mapping[str, Any]) -> str:
    return str(inputs.get("project") or _provider["project"])


def _region(inputs: Mapping[str, Any]) -> str:
    return str(inputs.get("region") or _provider["region"])


def _provider_fake(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    for key in ("project", "region"):
        if isinstance(inputs.get(key), str) and inputs[key]:
            _provider[key] = inputs[key]
    return {}


def _name(name: str, inputs: Mapping[str, Any]) -> str:
    """The resource's cloud name: explicit, from ``name_prefix`` (provider-generated suffix), or the logical name
    (Pulumi's auto-naming adds a random suffix for real; the plan keeps the logical name readable)."""
    if inputs.get("name"):
        return str(inputs["name"])
    if inputs.get("namePrefix"):
        return f"{inputs['namePrefix']}{_digest(name)[:26]}"
    return name


def _global(collection: str) -> Fake:
    def fake(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        cloud_name = _name(name, inputs)
        return {
            "name": cloud_name,
            "selfLink": f"{COMPUTE}/projects/{_project(inputs)}/global/{collection}/{cloud_name}",
        }

    return fake


def _regional(collection: str) -> Fake:
    def fake(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        cloud_name = _name(name, inputs)
        link = f"{COMPUTE}/projects/{_project(inputs)}/regions/{_region(inputs)}/{collection}/{cloud_name}"
        return {"name": cloud_name, "selfLink": link, "region": _region(inputs)}

    return fake


def _ip(net: str, name: str) -> str:
    return f"{net}.{int(_digest(name)[:4], 16) % 250 + 2}"


def _instance_template(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    state = _global("instanceTemplates")(name, inputs)
    state["selfLinkUnique"] = f"{state['selfLink']}?uniqueId={int(_digest('unique', name)[:12], 16)}"
    return state


def _mig(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    state = _regional("instanceGroupManagers")(name, inputs)
    base = f"{COMPUTE}/projects/{_project(inputs)}/regions/{_region(inputs)}"
    state["instanceGroup"] = f"{base}/instanceGroups/{state['name']}"
    return state


def _global_address(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {**_global("addresses")(name, inputs), "address": _ip("203.0.113", name)}  # TEST-NET-3


def _address(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {**_regional("addresses")(name, inputs), "address": _ip("198.51.100", name)}  # TEST-NET-2


def _account(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    email = f"{inputs['accountId']}@{_project(inputs)}.iam.gserviceaccount.com"
    return {
        "email": email,
        "member": f"serviceAccount:{email}",
        "name": f"projects/{_project(inputs)}/serviceAccounts/{email}",
        "uniqueId": str(int(_digest(email)[:15], 16)),
    }


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


def _certificate(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    state = _global("sslCertificates")(name, inputs)
    managed = inputs.get("managed") or {}
    return {**state, "certificateId": int(_digest(name)[:8], 16), "subjectAlternativeNames": managed.get("domains", [])}


# invoke token -> fake(token, args) -> result
CALLS: dict[str, Fake] = {}
# resource type token -> fake(name, inputs) -> extra computed state (ids, ARNs, self links, ...)
STATE: dict[str, Fake] = {
    "pulumi:providers:gcp": _provider_fake,
    "gcp:serviceaccount/account:Account": _account,
    "gcp:storage/bucket:Bucket": _bucket,
    "gcp:storage/bucketObject:BucketObject": _bucket_object,
    "gcp:compute/network:Network": _global("networks"),
    "gcp:compute/subnetwork:Subnetwork": _regional("subnetworks"),
    "gcp:compute/router:Router": _regional("routers"),
    "gcp:compute/firewall:Firewall": _global("firewalls"),
    "gcp:compute/instanceTemplate:InstanceTemplate": _instance_template,
    "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager": _mig,
    "gcp:compute/regionAutoscaler:RegionAutoscaler": _regional("autoscalers"),
    "gcp:compute/healthCheck:HealthCheck": _global("healthChecks"),
    "gcp:compute/backendService:BackendService": _global("backendServices"),
    "gcp:compute/httpHealthCheck:HttpHealthCheck": _global("httpHealthChecks"),
    "gcp:compute/targetPool:TargetPool": _regional("targetPools"),
    "gcp:compute/securityPolicy:SecurityPolicy": _global("securityPolicies"),
    "gcp:compute/uRLMap:URLMap": _global("urlMaps"),
    "gcp:compute/targetHttpProxy:TargetHttpProxy": _global("targetHttpProxies"),
    "gcp:compute/targetHttpsProxy:TargetHttpsProxy": _global("targetHttpsProxies"),
    "gcp:compute/sSLPolicy:SSLPolicy": _global("sslPolicies"),
    "gcp:compute/managedSslCertificate:ManagedSslCertificate": _certificate,
    "gcp:compute/globalAddress:GlobalAddress": _global_address,
    "gcp:compute/address:Address": _address,
    "gcp:compute/globalForwardingRule:GlobalForwardingRule": _global("forwardingRules"),
    "gcp:compute/forwardingRule:ForwardingRule": _regional("forwardingRules"),
}
