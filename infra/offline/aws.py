"""AWS's offline answers: the attributes AWS computes (ARNs, DNS names, ``latestVersion``, autonamed names) and the
results of the invokes the AWS stack makes, shaped like the real provider's, for `infra.offline.evaluate`.

- ``invokes[token](token, args) -> result``: ``args`` and the result use the provider's camelCase wire names
  (``insecureValue``, ``zoneIds``). Only the invokes the AWS stack makes, plus caller identity and partition.
- ``resources[type](name, inputs) -> extra state``: merged over the inputs (plus ``name`` and ``id``) the offline
  provider already returns.

Values are deterministic (hashes of the logical name), in the account ``ACCOUNT_ID``. Regional ARNs use the region
of the stack's explicit provider, which registers before any resource that uses it; each evaluation's answers keep
that region in their own `_Run`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from infra.offline import Answer, Answers, Placeholders

ACCOUNT_ID = "123456789012"
ZONE_SUFFIXES = ("a", "b", "c")
ELB_HOSTED_ZONE_ID = "Z32O12XQLNTSW2"  # eu-west-1's ALB zone; a fixed, well-formed stand-in elsewhere


def _hex(*parts: str, n: int = 16) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:n]


# --- invokes (stateless: the region comes with the args or is the run's) -------------------------------------------


def _caller_identity(_: str, __: Mapping[str, Any]) -> dict[str, Any]:
    arn = f"arn:aws:iam::{ACCOUNT_ID}:user/modelfleet-plan"
    return {"id": ACCOUNT_ID, "accountId": ACCOUNT_ID, "arn": arn, "userId": "AIDAMODELFLEETPLAN"}


def _partition(_: str, __: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": "aws", "partition": "aws", "dnsSuffix": "amazonaws.com", "reverseDnsPrefix": "com.amazonaws"}


def _object(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "arn": f"arn:aws:s3:::{inputs.get('bucket')}/{inputs.get('key')}",
        "etag": _hex(name, n=32),
        "versionId": _hex(name, "version", n=32),
    }


class _Run:
    """One evaluation's region: the stack's explicit provider sets it when it registers."""

    def __init__(self) -> None:
        self.region = "us-east-1"
        self.placeholders = Placeholders()  # see `Answers.placeholders`

    def _physical(self, name: str, inputs: Mapping[str, Any]) -> str:
        """What AWS autonaming gives: the logical name plus a random 7-character suffix, unless a name was set."""
        given = inputs.get("name")
        return str(given) if given else self.placeholders.made_up(f"{name}-{_hex(name, n=7)}")

    def eip(self, name: str, _: Mapping[str, Any]) -> dict[str, Any]:
        n = int(_hex(name, n=4), 16)
        return {
            "allocationId": self.placeholders.made_up(f"eipalloc-0{_hex(name, n=16)}"),
            "publicIp": self.placeholders.made_up(f"203.0.113.{n % 254 + 1}"),
        }

    def _arn(self, service: str, resource: str, *, regional: bool = True) -> str:
        # The account is known only to the credentials `pulumi up` runs with (and, in many ARNs, a generated id).
        return self.placeholders.made_up(f"arn:aws:{service}:{self.region if regional else ''}:{ACCOUNT_ID}:{resource}")

    def provider(self, _: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        if inputs.get("region"):
            self.region = str(inputs["region"])
        return {}

    # invokes

    def availability_zones(self, _: str, args: Mapping[str, Any]) -> dict[str, Any]:
        region = str(args.get("region") or self.region)
        return {
            "id": region,
            "region": region,
            "names": [f"{region}{s}" for s in ZONE_SUFFIXES],
            "zoneIds": [f"{region.replace('-', '')[:4]}-az{i + 1}" for i in range(len(ZONE_SUFFIXES))],
            "groupNames": [region],
            "state": args.get("state"),
        }

    def ssm_parameter(self, _: str, args: Mapping[str, Any]) -> dict[str, Any]:
        name = str(args["name"])
        region = str(args.get("region") or self.region)
        value = self.placeholders.made_up(
            f"ami-0{_hex(name, region, n=16)}" if name.endswith("/ami-id") else f"value-of-{name}"
        )
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

    # computed attributes

    def bucket(self, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        bucket = inputs.get("bucket") or self.placeholders.made_up(
            f"{inputs.get('bucketPrefix') or name + '-'}{_hex(name, n=20)}"
        )
        return {
            "bucket": bucket,
            "arn": f"arn:aws:s3:::{bucket}",
            "region": self.region,
            "bucketDomainName": f"{bucket}.s3.amazonaws.com",
            "bucketRegionalDomainName": f"{bucket}.s3.{self.region}.amazonaws.com",
        }

    def iam(self, kind: str) -> Answer:
        def answer(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
            physical = self._physical(name, inputs)
            path = str(inputs.get("path") or "/")
            return {"name": physical, "arn": self._arn("iam", f"{kind}{path}{physical}", regional=False)}

        return answer

    def role(self, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {**self.iam("role")(name, inputs), "uniqueId": f"AROA{_hex(name, n=17).upper()}"}

    def launch_template(self, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        lt_id = f"lt-0{_hex(name, n=16)}"
        return {
            "name": self._physical(name, inputs),
            "arn": self._arn("ec2", f"launch-template/{lt_id}"),
            "latestVersion": 1,
            "defaultVersion": 1,
        }

    def load_balancer(self, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        physical = self._physical(name, inputs)
        suffix = f"app/{physical}/{_hex(name)}"
        return {
            "name": physical,
            "arn": self._arn("elasticloadbalancing", f"loadbalancer/{suffix}"),
            "arnSuffix": suffix,
            "dnsName": self.placeholders.made_up(
                f"{physical}-{int(_hex(name, n=8), 16) % 10**9}.{self.region}.elb.amazonaws.com"
            ),
            "zoneId": ELB_HOSTED_ZONE_ID,
        }

    def target_group(self, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        physical = self._physical(name, inputs)
        suffix = f"targetgroup/{physical}/{_hex(name)}"
        return {"name": physical, "arn": self._arn("elasticloadbalancing", suffix), "arnSuffix": suffix}

    def listener(self, name: str, _: Mapping[str, Any]) -> dict[str, Any]:
        return {"arn": self._arn("elasticloadbalancing", f"listener/app/{name}/{_hex(name)}/{_hex(name, 'l')}")}

    def autoscaling_group(self, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        physical = self._physical(name, inputs)
        resource = f"autoScalingGroup:{_hex(name, n=8)}:autoScalingGroupName/{physical}"
        return {"name": physical, "arn": self._arn("autoscaling", resource)}

    def ec2(self, kind: str, prefix: str) -> Answer:
        def answer(name: str, _: Mapping[str, Any]) -> dict[str, Any]:
            return {"arn": self._arn("ec2", self.placeholders.made_up(f"{kind}/{prefix}-0{_hex(name, n=16)}"))}

        return answer


def answers() -> Answers:
    """A fresh set of AWS answers for one evaluation."""
    run = _Run()
    return Answers(
        placeholders=run.placeholders,
        invokes={
            "aws:index/getAvailabilityZones:getAvailabilityZones": run.availability_zones,
            "aws:ssm/getParameter:getParameter": run.ssm_parameter,
            "aws:index/getCallerIdentity:getCallerIdentity": _caller_identity,
            "aws:index/getPartition:getPartition": _partition,
        },
        resources={
            "pulumi:providers:aws": run.provider,
            "aws:s3/bucket:Bucket": run.bucket,
            "aws:s3/bucketObjectv2:BucketObjectv2": _object,
            "aws:iam/role:Role": run.role,
            "aws:iam/policy:Policy": run.iam("policy"),
            "aws:iam/instanceProfile:InstanceProfile": run.iam("instance-profile"),
            "aws:ec2/launchTemplate:LaunchTemplate": run.launch_template,
            "aws:lb/loadBalancer:LoadBalancer": run.load_balancer,
            "aws:lb/targetGroup:TargetGroup": run.target_group,
            "aws:lb/listener:Listener": run.listener,
            "aws:autoscaling/group:Group": run.autoscaling_group,
            "aws:ec2/vpc:Vpc": run.ec2("vpc", "vpc"),
            "aws:ec2/subnet:Subnet": run.ec2("subnet", "subnet"),
            "aws:ec2/securityGroup:SecurityGroup": run.ec2("security-group", "sg"),
            "aws:ec2/eip:Eip": run.eip,
        },
    )
