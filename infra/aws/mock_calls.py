"""Offline answers for this cloud's provider invokes and computed resource attributes, used by `infra/mocks.py`
(for `modelfleet plan` and the tests). Keep each answer shaped like the real provider's.

Shapes:
- ``CALLS[token](token, args) -> result``: ``args`` and the result use the provider's camelCase wire names
  (``insecureValue``, ``zoneIds``). Only the invokes the AWS stack makes, plus caller identity and partition.
- ``STATE[type](name, inputs) -> extra state``: merged over the inputs (plus ``name`` and ``id``) that
  `RecordingMocks` already returns; only what AWS computes (ARNs, DNS names, ``latestVersion``, autonamed names).

Values are deterministic (hashes of the logical name), in the account ``ACCOUNT_ID``. Regional ARNs use the region
of the stack's explicit provider, which registers before any resource that uses it (``_region``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from infra.mocks import Fake

ACCOUNT_ID = "123456789012"
ZONE_SUFFIXES = ("a", "b", "c")
ELB_HOSTED_ZONE_ID = "Z32O12XQLNTSW2"  # eu-west-1's ALB zone; a fixed, well-formed stand-in elsewhere
_region = {"name": "us-east-1"}


def _hex(*parts: str, n: int = 16) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:n]


def _physical(name: str, inputs: Mapping[str, Any]) -> str:
    """What AWS autonaming gives: the logical name plus a 7-character suffix, unless a name was set."""
    given = inputs.get("name")
    return str(given) if given else f"{name}-{_hex(name, n=7)}"


def _arn(service: str, resource: str, *, regional: bool = True) -> str:
    return f"arn:aws:{service}:{_region['name'] if regional else ''}:{ACCOUNT_ID}:{resource}"


# --- invokes --------------------------------------------------------------------------------------------------


def _availability_zones(_: str, args: Mapping[str, Any]) -> dict[str, Any]:
    region = str(args.get("region") or _region["name"])
    return {
        "id": region,
        "region": region,
        "names": [f"{region}{s}" for s in ZONE_SUFFIXES],
        "zoneIds": [f"{region.replace('-', '')[:4]}-az{i + 1}" for i in range(len(ZONE_SUFFIXES))],
        "groupNames": [region],
        "state": args.get("state"),
    }


def _ssm_parameter(_: str, args: Mapping[str, Any]) -> dict[str, Any]:
    name = str(args["name"])
    region = str(args.get("region") or _region["name"])
    value = f"ami-0{_hex(name, region, n=16)}" if name.endswith("/ami-id") else f"value-of-{name}"
    return {
        "id": name,
        "name": name,
        "arn": f"arn:aws:ssm:{region}::parameter{name}",
        "type": "String",
        "value": value,
        "insecureValue": value,
        "version": 1,
        "region": region,
        "withDecryption": True,
    }


def _caller_identity(_: str, __: Mapping[str, Any]) -> dict[str, Any]:
    arn = f"arn:aws:iam::{ACCOUNT_ID}:user/modelfleet-plan"
    return {"id": ACCOUNT_ID, "accountId": ACCOUNT_ID, "arn": arn, "userId": "AIDAMODELFLEETPLAN"}


def _partition(_: str, __: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": "aws", "partition": "aws", "dnsSuffix": "amazonaws.com", "reverseDnsPrefix": "com.amazonaws"}


# invoke token -> fake(token, args) -> result
CALLS: dict[str, Fake] = {
    "aws:index/getAvailabilityZones:getAvailabilityZones": _availability_zones,
    "aws:ssm/getParameter:getParameter": _ssm_parameter,
    "aws:index/getCallerIdentity:getCallerIdentity": _caller_identity,
    "aws:index/getPartition:getPartition": _partition,
}


# --- computed attributes ----------------------------------------------------------------------------------------


def _provider(_: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    if inputs.get("region"):
        _region["name"] = str(inputs["region"])
    return {}


def _bucket(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    bucket = inputs.get("bucket") or f"{inputs.get('bucketPrefix') or name + '-'}{_hex(name, n=20)}"
    region = _region["name"]
    return {
        "bucket": bucket,
        "arn": f"arn:aws:s3:::{bucket}",
        "region": region,
        "bucketDomainName": f"{bucket}.s3.amazonaws.com",
        "bucketRegionalDomainName": f"{bucket}.s3.{region}.amazonaws.com",
    }


def _object(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "arn": f"arn:aws:s3:::{inputs.get('bucket')}/{inputs.get('key')}",
        "etag": _hex(name, n=32),
        "versionId": _hex(name, "version", n=32),
    }


def _iam(kind: str) -> Fake:
    def fake(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        physical = _physical(name, inputs)
        path = str(inputs.get("path") or "/")
        return {"name": physical, "arn": _arn("iam", f"{kind}{path}{physical}", regional=False)}

    return fake


def _role(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {**_iam("role")(name, inputs), "uniqueId": f"AROA{_hex(name, n=17).upper()}"}


def _launch_template(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    lt_id = f"lt-0{_hex(name, n=16)}"
    return {
        "name": _physical(name, inputs),
        "arn": _arn("ec2", f"launch-template/{lt_id}"),
        "latestVersion": 1,
        "defaultVersion": 1,
    }


def _load_balancer(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    physical = _physical(name, inputs)
    suffix = f"app/{physical}/{_hex(name)}"
    return {
        "name": physical,
        "arn": _arn("elasticloadbalancing", f"loadbalancer/{suffix}"),
        "arnSuffix": suffix,
        "dnsName": f"{physical}-{int(_hex(name, n=8), 16) % 10**9}.{_region['name']}.elb.amazonaws.com",
        "zoneId": ELB_HOSTED_ZONE_ID,
    }


def _target_group(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    physical = _physical(name, inputs)
    suffix = f"targetgroup/{physical}/{_hex(name)}"
    return {"name": physical, "arn": _arn("elasticloadbalancing", suffix), "arnSuffix": suffix}


def _listener(name: str, _: Mapping[str, Any]) -> dict[str, Any]:
    return {"arn": _arn("elasticloadbalancing", f"listener/app/{name}/{_hex(name)}/{_hex(name, 'l')}")}


def _autoscaling_group(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    physical = _physical(name, inputs)
    return {
        "name": physical,
        "arn": _arn("autoscaling", f"autoScalingGroup:{_hex(name, n=8)}:autoScalingGroupName/{physical}"),
    }


def _ec2(kind: str, prefix: str) -> Fake:
    def fake(name: str, _: Mapping[str, Any]) -> dict[str, Any]:
        return {"arn": _arn("ec2", f"{kind}/{prefix}-0{_hex(name, n=16)}")}

    return fake


def _eip(name: str, _: Mapping[str, Any]) -> dict[str, Any]:
    n = int(_hex(name, n=4), 16)
    return {"allocationId": f"eipalloc-0{_hex(name, n=16)}", "publicIp": f"203.0.113.{n % 254 + 1}"}


# resource type token -> fake(name, inputs) -> extra computed state (ids, ARNs, self links, ...)
STATE: dict[str, Fake] = {
    "pulumi:providers:aws": _provider,
    "aws:s3/bucket:Bucket": _bucket,
    "aws:s3/bucketObjectv2:BucketObjectv2": _object,
    "aws:iam/role:Role": _role,
    "aws:iam/policy:Policy": _iam("policy"),
    "aws:iam/instanceProfile:InstanceProfile": _iam("instance-profile"),
    "aws:ec2/launchTemplate:LaunchTemplate": _launch_template,
    "aws:lb/loadBalancer:LoadBalancer": _load_balancer,
    "aws:lb/targetGroup:TargetGroup": _target_group,
    "aws:lb/listener:Listener": _listener,
    "aws:autoscaling/group:Group": _autoscaling_group,
    "aws:ec2/vpc:Vpc": _ec2("vpc", "vpc"),
    "aws:ec2/subnet:Subnet": _ec2("subnet", "subnet"),
    "aws:ec2/securityGroup:SecurityGroup": _ec2("security-group", "sg"),
    "aws:ec2/eip:Eip": _eip,
}
