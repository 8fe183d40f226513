"""The VPC the stack runs in: public subnets for the load balancer, private subnets (no public IPs, egress through
NAT) for the VMs, an S3 gateway endpoint so model downloads bypass the NAT. Or an existing VPC and subnets.

Layout of ``cidr`` (a /16 by default), split in quarters: quarter 0 holds the public subnets (a sixteenth of the
range each, /20 for a /16), quarters 1-3 are the private subnets (a quarter each, /18 for a /16), one per zone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

TYPE = "modelfleet:aws:Network"
MAX_ZONES = 3
_MAX_PREFIX = 24  # public subnets are prefix+4 long; AWS's smallest subnet is a /28


@dataclass(frozen=True)
class ExistingNetwork:
    vpc_id: str
    instance_subnet_ids: tuple[str, ...]  # private subnets with a route to the internet (NAT) for image pulls
    load_balancer_subnet_ids: tuple[str, ...]  # public subnets in at least two zones


@dataclass(frozen=True)
class NetworkArgs:
    region: str
    cidr: str = "10.60.0.0/16"
    zone_count: int = 2
    nat_gateway_per_zone: bool = False  # False: one NAT gateway shared by every zone (cheaper, one zone's fate)
    existing: ExistingNetwork | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.existing is None:
            subnet_plan(self.cidr, self.zone_count)  # raises on a range or zone count the layout cannot hold
        elif len(self.existing.load_balancer_subnet_ids) < 2 or not self.existing.instance_subnet_ids:
            raise ValueError("an existing network needs load balancer subnets in two zones and instance subnets")


def subnet_plan(cidr: str, zone_count: int) -> tuple[list[str], list[str]]:
    """(public CIDRs, private CIDRs), one of each per zone."""
    if not 2 <= zone_count <= MAX_ZONES:
        raise ValueError(f"zone_count must be between 2 and {MAX_ZONES}, got {zone_count}")
    net = ipaddress.ip_network(cidr, strict=True)
    if not isinstance(net, ipaddress.IPv4Network) or net.prefixlen > _MAX_PREFIX:
        raise ValueError(f"network CIDR {cidr!r} must be IPv4 and /{_MAX_PREFIX} or larger (e.g. 10.60.0.0/16)")
    quarters = list(net.subnets(prefixlen_diff=2))
    public = [str(s) for s in list(quarters[0].subnets(prefixlen_diff=2))[:zone_count]]
    private = [str(q) for q in quarters[1 : 1 + zone_count]]
    return public, private


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    public_subnet_ids: pulumi.Output[list[str]]
    private_subnet_ids: pulumi.Output[list[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE, name, None, opts)
        if args.existing is not None:
            self.vpc_id = pulumi.Output.from_input(args.existing.vpc_id)
            self.public_subnet_ids = pulumi.Output.from_input(list(args.existing.load_balancer_subnet_ids))
            self.private_subnet_ids = pulumi.Output.from_input(list(args.existing.instance_subnet_ids))
        else:
            self._create(name, args)
        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "public_subnet_ids": self.public_subnet_ids,
                "private_subnet_ids": self.private_subnet_ids,
            }
        )

    def _create(self, name: str, args: NetworkArgs) -> None:
        child = pulumi.ResourceOptions(parent=self)

        def tags(suffix: str, **extra: str) -> dict[str, str]:
            return {**args.tags, "Name": f"{name}-{suffix}", **extra}

        public_cidrs, private_cidrs = subnet_plan(args.cidr, args.zone_count)
        # Zones that need no opt-in (no Local / Wavelength zones); names differ per account, so look them up.
        zones = aws.get_availability_zones_output(
            state="available",
            region=args.region,
            filters=[aws.GetAvailabilityZonesFilterArgs(name="opt-in-status", values=["opt-in-not-required"])],
            opts=pulumi.InvokeOptions(parent=self),
        ).names

        def zone(i: int) -> pulumi.Output[str]:
            def pick(names: Sequence[str]) -> str:
                if len(names) <= i:
                    raise ValueError(f"region {args.region} has {len(names)} usable zones; the stack needs {i + 1}")
                return names[i]

            return zones.apply(pick)

        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.cidr,
            enable_dns_support=True,
            enable_dns_hostnames=True,
            tags=tags("vpc"),
            opts=child,
        )
        # Take over the VPC's default security group and leave it without rules: nothing should use it.
        aws.ec2.DefaultSecurityGroup(f"{name}-default-sg", vpc_id=vpc.id, tags=tags("default-sg-unused"), opts=child)
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=tags("igw"), opts=child)

        public_rt = aws.ec2.RouteTable(f"{name}-public", vpc_id=vpc.id, tags=tags("public"), opts=child)
        public_route = aws.ec2.Route(
            f"{name}-public-internet",
            route_table_id=public_rt.id,
            destination_cidr_block="0.0.0.0/0",
            gateway_id=igw.id,
            opts=child,
        )
        public: list[aws.ec2.Subnet] = []
        private: list[aws.ec2.Subnet] = []
        private_tables: list[aws.ec2.RouteTable] = []
        public_ready: list[pulumi.Output[str]] = []  # what must exist before anything uses a subnet
        private_ready: list[pulumi.Output[str]] = []
        nats: list[aws.ec2.NatGateway] = []
        nat_count = args.zone_count if args.nat_gateway_per_zone else 1
        for i in range(args.zone_count):
            az = zone(i)
            subnet = aws.ec2.Subnet(
                f"{name}-public-{i}",
                vpc_id=vpc.id,
                cidr_block=public_cidrs[i],
                availability_zone=az,
                map_public_ip_on_launch=False,  # only the ALB and NAT gateways live here, with their own addresses
                tags=tags(f"public-{i}", tier="public"),
                opts=child,
            )
            association = aws.ec2.RouteTableAssociation(
                f"{name}-public-{i}", subnet_id=subnet.id, route_table_id=public_rt.id, opts=child
            )
            public.append(subnet)
            public_ready.append(association.id)
            if i < nat_count:
                eip = aws.ec2.Eip(f"{name}-nat-{i}", domain="vpc", tags=tags(f"nat-{i}"), opts=child)
                nats.append(
                    aws.ec2.NatGateway(
                        f"{name}-nat-{i}",
                        allocation_id=eip.allocation_id,
                        subnet_id=subnet.id,
                        connectivity_type="public",
                        tags=tags(f"nat-{i}"),
                        opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
                    )
                )
        for i in range(args.zone_count):
            subnet = aws.ec2.Subnet(
                f"{name}-private-{i}",
                vpc_id=vpc.id,
                cidr_block=private_cidrs[i],
                availability_zone=zone(i),
                map_public_ip_on_launch=False,
                tags=tags(f"private-{i}", tier="private"),
                opts=child,
            )
            table = aws.ec2.RouteTable(f"{name}-private-{i}", vpc_id=vpc.id, tags=tags(f"private-{i}"), opts=child)
            egress_route = aws.ec2.Route(
                f"{name}-private-{i}-egress",
                route_table_id=table.id,
                destination_cidr_block="0.0.0.0/0",
                nat_gateway_id=nats[min(i, nat_count - 1)].id,
                opts=child,
            )
            association = aws.ec2.RouteTableAssociation(
                f"{name}-private-{i}", subnet_id=subnet.id, route_table_id=table.id, opts=child
            )
            private.append(subnet)
            private_tables.append(table)
            private_ready += [egress_route.id, association.id]
        # Model downloads and the agent's polls go to S3 directly: no NAT data-processing charge, no internet hop.
        s3_endpoint = aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=vpc.id,
            service_name=f"com.amazonaws.{args.region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=[t.id for t in private_tables],
            tags=tags("s3"),
            opts=child,
        )

        self.vpc_id = vpc.id
        # The subnet lists carry their routes as dependencies: an internet-facing ALB needs the internet gateway,
        # and a VM booting before its NAT route could not install anything.
        self.public_subnet_ids = _ids_after([s.id for s in public], [public_route.id, *public_ready])
        self.private_subnet_ids = _ids_after([s.id for s in private], [*private_ready, s3_endpoint.id])


def _ids_after(ids: list[pulumi.Output[str]], after: list[pulumi.Output[str]]) -> pulumi.Output[list[str]]:
    count = len(ids)
    return pulumi.Output.all(*ids, *after).apply(lambda values: [str(v) for v in values[:count]])
