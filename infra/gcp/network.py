"""The fleets' network: a dedicated custom-mode VPC with one regional subnet, or an existing one from the config.

VMs have no external address. A Cloud Router + Cloud NAT gives them egress (Docker Hub for the TF Serving image,
PyPI for the agent's dependencies); Private Google Access on the subnet keeps GCS traffic on Google's network.
With an existing network the stack creates neither: the network's owner already provides egress (a second NAT
gateway on the same subnet would conflict), see docs/gcp.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp


@dataclass(frozen=True)
class NetworkArgs:
    region: str
    cidr: str  # the subnet's primary range
    existing_network: str | None = None  # network self link
    existing_subnetwork: str | None = None  # subnetwork self link (required with existing_network)


class Network(pulumi.ComponentResource):
    network: pulumi.Output[str]  # self link
    subnetwork: pulumi.Output[str]  # self link
    nat_name: pulumi.Output[str] | None

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("modelfleet:gcp:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.nat_name = None
        if args.existing_network:
            if not args.existing_subnetwork:
                raise ValueError("an existing network needs an existing subnetwork for the VMs")
            self.network = pulumi.Output.from_input(args.existing_network)
            self.subnetwork = pulumi.Output.from_input(args.existing_subnetwork)
        else:
            vpc = gcp.compute.Network(
                f"{name}-vpc",
                auto_create_subnetworks=False,
                routing_mode="REGIONAL",
                description="modelfleet serving VMs",
                opts=child,
            )
            subnet = gcp.compute.Subnetwork(
                f"{name}-subnet",
                network=vpc.self_link,
                region=args.region,
                ip_cidr_range=args.cidr,
                private_ip_google_access=True,
                stack_type="IPV4_ONLY",
                log_config=gcp.compute.SubnetworkLogConfigArgs(
                    aggregation_interval="INTERVAL_5_MIN",
                    flow_sampling=0.5,
                    metadata="INCLUDE_ALL_METADATA",
                ),
                opts=child,
            )
            router = gcp.compute.Router(
                f"{name}-router",
                network=vpc.self_link,
                region=args.region,
                opts=child,
            )
            nat = gcp.compute.RouterNat(
                f"{name}-nat",
                router=router.name,
                region=args.region,
                nat_ip_allocate_option="AUTO_ONLY",
                source_subnetwork_ip_ranges_to_nat="LIST_OF_SUBNETWORKS",
                subnetworks=[
                    gcp.compute.RouterNatSubnetworkArgs(
                        name=subnet.self_link,
                        source_ip_ranges_to_nats=["ALL_IP_RANGES"],
                    )
                ],
                log_config=gcp.compute.RouterNatLogConfigArgs(enable=True, filter="ERRORS_ONLY"),
                opts=child,
            )
            self.vpc, self.subnet, self.router, self.nat = vpc, subnet, router, nat
            self.network = vpc.self_link
            self.subnetwork = subnet.self_link
            self.nat_name = nat.name
        self.register_outputs({"network": self.network, "subnetwork": self.subnetwork, "nat_name": self.nat_name})
