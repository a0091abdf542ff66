"""Two NAT instances sharing one stopped backup, on moto: the seeded Jupiter
topology plus a second NAT (``nat-b``) with its own route table, and for
each member a target group, a Route 53 record (and an Elastic IP for
``nat-b``), so that every attachment kind is in the pool. The seeded NAT
pair becomes ``nat-a`` and the shared standby.

A TCP listener per instance on loopback stands in for its service:
``nat-a`` on 127.0.0.2, the standby on 127.0.0.3, ``nat-b`` on 127.0.0.4,
one port on all three.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from jupiterd.config import Config, parse_config
from jupiterd.sandbox.seed import Topology, moto_client, seed
from tests.peers.jupiter_aws import FAST, _Listener

MEMBERS = ("nat-a", "nat-b")
HOSTS = {"nat-a": "127.0.0.2", "standby": "127.0.0.3", "nat-b": "127.0.0.4"}


@dataclass
class NatPool:
    topology: Topology
    ids: dict[str, str]  # nat-a, nat-b, standby -> instance id
    enis: dict[str, str]
    private_ips: dict[str, str]
    route_tables: dict[str, list[str]]  # member -> its tables
    target_groups: dict[str, str]  # member -> ARN
    eips: dict[str, str]  # member -> allocation id
    records: dict[str, str]  # member -> record name
    listeners: dict[str, _Listener]
    config: Config
    config_path: Path

    def clients(self) -> tuple[Any, Any, Any]:
        region, url = self.topology.region, self.topology.endpoint_url
        return (
            moto_client(url, region, "ec2"),
            moto_client(url, region, "elbv2"),
            moto_client(url, region, "route53"),
        )


def _port_free_everywhere() -> int:
    for _ in range(50):
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(socket.socket())
            first.bind((HOSTS["nat-a"], 0))
            port = int(first.getsockname()[1])
            try:
                for host in (HOSTS["standby"], HOSTS["nat-b"]):
                    stack.enter_context(socket.socket()).bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free on the three loopback addresses")


@contextlib.contextmanager
def nat_pool(endpoint_url: str, tmp: Path) -> Iterator[NatPool]:
    """Seed ``endpoint_url`` (moto, freshly reset by the caller), add the
    second NAT and the pool's attachments, start the listeners."""
    topo = seed(endpoint_url)
    ec2 = moto_client(endpoint_url, topo.region, "ec2")
    elb = moto_client(endpoint_url, topo.region, "elbv2")
    r53 = moto_client(endpoint_url, topo.region, "route53")
    ids = {"nat-a": topo.instances["nat"]["primary"], "standby": topo.instances["nat"]["backup"]}
    subnet = ec2.describe_instances(InstanceIds=[ids["nat-a"]])["Reservations"][0]["Instances"][0][
        "SubnetId"
    ]
    image = ec2.describe_instances(InstanceIds=[ids["nat-a"]])["Reservations"][0]["Instances"][0][
        "ImageId"
    ]
    b = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.small",
        SubnetId=topo.public_subnets[1] if len(topo.public_subnets) > 1 else subnet,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [
                    {"Key": "Project", "Value": "Jupiter"},
                    {"Key": "Service", "Value": "nat-b"},
                    {"Key": "Role", "Value": "primary"},
                ],
            }
        ],
    )["Instances"][0]
    ids["nat-b"] = b["InstanceId"]
    ec2.modify_instance_attribute(InstanceId=ids["nat-b"], SourceDestCheck={"Value": False})
    found = {
        i["InstanceId"]: i
        for r in ec2.describe_instances(InstanceIds=list(ids.values()))["Reservations"]
        for i in r["Instances"]
    }
    enis = {k: found[v]["NetworkInterfaces"][0]["NetworkInterfaceId"] for k, v in ids.items()}
    ips = {k: found[v]["PrivateIpAddress"] for k, v in ids.items()}
    rtb_b = ec2.create_route_table(VpcId=topo.vpc_id)["RouteTable"]["RouteTableId"]
    ec2.create_route(
        RouteTableId=rtb_b, DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=enis["nat-b"]
    )
    route_tables = {"nat-a": list(topo.route_tables), "nat-b": [rtb_b]}
    tgs: dict[str, str] = {}
    records: dict[str, str] = {}
    for n, member in enumerate(MEMBERS):
        port = 7101 + n
        arn = elb.create_target_group(
            Name=f"pool-{member}", Protocol="TCP", Port=port, VpcId=topo.vpc_id
        )["TargetGroups"][0]["TargetGroupArn"]
        elb.create_listener(
            LoadBalancerArn=topo.nlb_arn,
            Protocol="TCP",
            Port=port,
            DefaultActions=[{"Type": "forward", "TargetGroupArn": arn}],
        )
        elb.register_targets(TargetGroupArn=arn, Targets=[{"Id": ids[member], "Port": port}])
        tgs[member] = arn
        records[member] = f"{member}.{topo.zone_name}"
        r53.change_resource_record_sets(
            HostedZoneId=topo.zone_id,
            ChangeBatch={
                "Changes": [
                    {
                        "Action": "UPSERT",
                        "ResourceRecordSet": {
                            "Name": records[member],
                            "Type": "A",
                            "TTL": 30,
                            "ResourceRecords": [{"Value": ips[member]}],
                        },
                    }
                ]
            },
        )
    eip_b = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.associate_address(AllocationId=eip_b, InstanceId=ids["nat-b"])
    eips = {"nat-b": eip_b}
    port = _port_free_everywhere()
    listeners = {k: _Listener(h, port) for k, h in HOSTS.items()}
    members: dict[str, Any] = {}
    for member in MEMBERS:
        att: dict[str, Any] = {
            "route_tables": route_tables[member],
            "target_groups": [tgs[member]],
            "route53": [{"zone_id": topo.zone_id, "name": records[member]}],
        }
        if member in eips:
            att["elastic_ip"] = eips[member]
        members[member] = {
            "instance_id": ids[member],
            "address": HOSTS[member],
            "attachments": att,
        }
    doc = {
        "aws": {"region": topo.region, "endpoint_url": endpoint_url},
        "state_dir": str(tmp / "state"),
        "sns_topic_arn": topo.topic_arn,
        "defaults": dict(FAST),
        "pools": {
            "nat": {
                "probe": {"kind": "tcp", "port": port},
                "members": members,
                "standby": {"instance_id": ids["standby"], "address": HOSTS["standby"]},
            }
        },
    }
    path = tmp / "jupiterd.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    for lis in listeners.values():
        lis.start()
    try:
        yield NatPool(
            topo,
            ids,
            enis,
            ips,
            route_tables,
            tgs,
            eips,
            records,
            listeners,
            parse_config(doc),
            path,
        )
    finally:
        for lis in listeners.values():
            lis.stop()
