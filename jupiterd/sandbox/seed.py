"""Build the Jupiter topology in a local AWS endpoint (moto) for tests and
the sandbox, and write a jupiterd configuration for it.

What it creates in ``ap-southeast-2`` (or the region given): a VPC
10.0.0.0/16 with public subnets (they give instances a public address;
coturn, frp and NAT live there) and private subnets in two AZs and an
internet gateway; per service a running primary (AZ a) and a STOPPED
backup (AZ b), tagged Project/Service/Role; an ALB (signaling 3000/HTTP and
thingsboard 8080/HTTP target groups) and an NLB (coturn 3478 UDP and TCP
target groups), the primaries registered; the frp Elastic IP on the frp
primary; a hosted zone (its id as moto draws it) with one A record per
service pointing at its primary (coturn's at its public address, frp's at
the Elastic IP); private route tables whose 0.0.0.0/0 route goes through
the NAT primary's network interface (its source/dest check off); the SNS
topic ``jupiter-failover-notifications`` with an SQS queue subscribed, so
tests can read what was published.

With ``nat_pool=True`` (the sandbox), the real layout of the NAT instances:
a second NAT instance (``nat-secondary``, AZ b, its source/dest check off)
is the default route of AZ b's private route table, the NAT primary keeps
AZ a's, and the stopped NAT backup is the standby of both
(``Topology.extra["nat_pool"]``).

It refuses any endpoint that is not on loopback: it must never create
resources in a real account.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import boto3

SERVICES = ("signaling", "coturn", "frp", "thingsboard", "nat")
ROLES = ("primary", "backup")
TOPIC_NAME = "jupiter-failover-notifications"
QUEUE_NAME = "jupiter-failover-notifications-test"
_AMI = "ami-12c6146b"  # one of moto's built-in images


class SeedError(Exception):
    pass


def check_loopback(endpoint_url: str) -> None:
    from jupiterd.config import is_loopback

    if not is_loopback(urlsplit(endpoint_url).hostname or ""):
        raise SeedError(
            f"refusing to seed {endpoint_url}: the seed only writes to a loopback endpoint (moto)"
        )


@dataclass
class Topology:
    endpoint_url: str
    region: str
    account: str
    vpc_id: str
    public_subnets: list[str]
    private_subnets: list[str]
    instances: dict[str, dict[str, str]]  # service -> role -> instance id
    private_ips: dict[str, dict[str, str]]
    target_groups: dict[str, str]  # name -> ARN
    service_target_groups: dict[str, list[str]]  # service -> ARNs
    alb_arn: str
    nlb_arn: str
    eip_allocation: str
    eip_public_ip: str
    zone_id: str
    zone_name: str
    records: dict[str, str]  # service -> record name
    record_addresses: dict[str, str]  # service -> "private" | "public"
    route_tables: list[str]
    topic_arn: str
    queue_url: str
    extra: dict[str, Any] = field(default_factory=dict)

    def attachments(self, service: str) -> dict[str, Any]:
        att: dict[str, Any] = {}
        if self.service_target_groups.get(service):
            att["target_groups"] = list(self.service_target_groups[service])
        if service == "frp":
            att["elastic_ip"] = self.eip_allocation
        if service in self.records:
            att["route53"] = [
                {
                    "zone_id": self.zone_id,
                    "name": self.records[service],
                    "address": self.record_addresses[service],
                }
            ]
        if service == "nat":
            att["route_tables"] = list(self.route_tables)
        return att

    def config_dict(
        self,
        listen: Mapping[str, Mapping[str, Any]],
        *,
        state_dir: str,
        defaults: Mapping[str, Any] | None = None,
        drills: Iterable[Mapping[str, Any]] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A jupiterd configuration for the services in ``listen``:
        ``{service: {"probe": {...}, "primary": ADDRESS, "backup": ADDRESS}}``
        (the addresses each instance's service listens on)."""
        services: dict[str, Any] = {}
        for name, spec in listen.items():
            svc: dict[str, Any] = {"probe": dict(spec["probe"])}
            for role in ROLES:
                ref: dict[str, Any] = {"instance_id": self.instances[name][role]}
                if spec.get(role):
                    ref["address"] = spec[role]
                svc[role] = ref
            svc["attachments"] = self.attachments(name)
            for key in ("thresholds", "stop_old", "auto_failover"):
                if key in spec:
                    svc[key] = spec[key]
            services[name] = svc
        doc: dict[str, Any] = {
            "aws": {"region": self.region, "endpoint_url": self.endpoint_url},
            "state_dir": state_dir,
            "sns_topic_arn": self.topic_arn,
            "services": services,
        }
        if defaults:
            doc["defaults"] = dict(defaults)
        if drills:
            doc["drills"] = [dict(d) for d in drills]
        if extra:
            doc.update(extra)
        return doc


def _tags(**kv: str) -> list[dict[str, Any]]:
    return [{"Key": k, "Value": v} for k, v in kv.items()]


def seed(
    endpoint_url: str,
    region: str = "ap-southeast-2",
    *,
    project_tag: str = "Jupiter",
    zone_name: str = "jupiter.example.com",
    prefix: str = "jupiter",
    nat_pool: bool = False,
) -> Topology:
    """Create the topology; ``prefix`` keeps names apart when one endpoint
    holds several copies; ``nat_pool``: two NAT instances sharing the
    backup (see the module's docstring)."""
    check_loopback(endpoint_url)
    ec2, elb, r53, sns, sqs = (
        moto_client(endpoint_url, region, n) for n in ("ec2", "elbv2", "route53", "sns", "sqs")
    )
    az = [f"{region}a", f"{region}b"]

    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.create_tags(Resources=[vpc], Tags=_tags(Name=f"{prefix}-vpc", Project=project_tag))
    public = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=az[i])["Subnet"][
            "SubnetId"
        ]
        for i in range(2)
    ]
    private = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{10 + i}.0/24", AvailabilityZone=az[i])[
            "Subnet"
        ]["SubnetId"]
        for i in range(2)
    ]
    for s in public:  # as a public subnet is made: instances get a public address
        ec2.modify_subnet_attribute(SubnetId=s, MapPublicIpOnLaunch={"Value": True})
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc)
    public_rt = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=public_rt, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    for s in public:
        ec2.associate_route_table(RouteTableId=public_rt, SubnetId=s)

    instances: dict[str, dict[str, str]] = {}
    private_ips: dict[str, dict[str, str]] = {}
    public_ips: dict[str, dict[str, str]] = {}
    enis: dict[str, dict[str, str]] = {}
    for name in SERVICES:
        in_public = name in ("coturn", "frp", "nat")
        instances[name], private_ips[name], public_ips[name], enis[name] = {}, {}, {}, {}
        for i, role in enumerate(ROLES):
            inst = ec2.run_instances(
                ImageId=_AMI,
                MinCount=1,
                MaxCount=1,
                InstanceType="t3.small",
                SubnetId=(public if in_public else private)[i],
                TagSpecifications=[
                    {
                        "ResourceType": "instance",
                        "Tags": _tags(
                            Name=f"{prefix}-{name}-{role}",
                            Project=project_tag,
                            Service=name,
                            Role=role,
                        ),
                    }
                ],
            )["Instances"][0]
            instances[name][role] = inst["InstanceId"]
            private_ips[name][role] = inst["PrivateIpAddress"]
            public_ips[name][role] = inst.get("PublicIpAddress", "")
            enis[name][role] = inst["NetworkInterfaces"][0]["NetworkInterfaceId"]
    nat_primary = instances["nat"]["primary"]
    ec2.modify_instance_attribute(InstanceId=nat_primary, SourceDestCheck={"Value": False})

    # Load balancers and target groups, the primaries registered.
    alb = elb.create_load_balancer(
        Name=f"{prefix}-alb", Subnets=public, Type="application", Scheme="internet-facing"
    )["LoadBalancers"][0]["LoadBalancerArn"]
    nlb = elb.create_load_balancer(
        Name=f"{prefix}-nlb", Subnets=public, Type="network", Scheme="internet-facing"
    )["LoadBalancers"][0]["LoadBalancerArn"]
    tg_specs = [
        ("signaling", f"{prefix}-signaling", "HTTP", 3000, alb, 80),
        ("thingsboard", f"{prefix}-thingsboard", "HTTP", 8080, alb, 8080),
        ("coturn", f"{prefix}-coturn-udp", "UDP", 3478, nlb, 3478),
        ("coturn", f"{prefix}-coturn-tcp", "TCP", 3478, nlb, 3478),
    ]
    target_groups: dict[str, str] = {}
    service_tgs: dict[str, list[str]] = {}
    for service, tg_name, proto, port, lb, listen_port in tg_specs:
        kw: dict[str, Any] = {}
        if proto == "UDP":
            kw["HealthCheckProtocol"] = "TCP"
        arn = elb.create_target_group(
            Name=tg_name, Protocol=proto, Port=port, VpcId=vpc, TargetType="instance", **kw
        )["TargetGroups"][0]["TargetGroupArn"]
        elb.create_listener(
            LoadBalancerArn=lb,
            Protocol=proto,
            Port=listen_port,
            DefaultActions=[{"Type": "forward", "TargetGroupArn": arn}],
        )
        elb.register_targets(
            TargetGroupArn=arn, Targets=[{"Id": instances[service]["primary"], "Port": port}]
        )
        target_groups[tg_name] = arn
        service_tgs.setdefault(service, []).append(arn)

    # The frp Elastic IP on the frp primary.
    eip = ec2.allocate_address(Domain="vpc")
    ec2.associate_address(AllocationId=eip["AllocationId"], InstanceId=instances["frp"]["primary"])

    extra: dict[str, Any] = {}
    nat_enis = [enis["nat"]["primary"]] * 2
    if nat_pool:
        second = _second_nat(ec2, public[1], project_tag, prefix)
        nat_enis[1] = second["eni"]
    # Private route tables through the NAT primary (AZ b's through the
    # second NAT instance with ``nat_pool``).
    route_tables = []
    for s, eni in zip(private, nat_enis, strict=True):
        rt = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
        ec2.create_route(RouteTableId=rt, DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=eni)
        ec2.associate_route_table(RouteTableId=rt, SubnetId=s)
        route_tables.append(rt)
    if nat_pool:
        extra["nat_pool"] = {
            "nat-a": {"instance_id": nat_primary, "route_tables": [route_tables[0]]},
            "nat-b": {"instance_id": second["instance_id"], "route_tables": [route_tables[1]]},
            "standby": instances["nat"]["backup"],
        }

    # Every backup stopped: the pilot-light layout.
    ec2.stop_instances(InstanceIds=[instances[n]["backup"] for n in SERVICES])

    zone_id = r53.create_hosted_zone(Name=zone_name, CallerReference=f"seed-{prefix}-{zone_name}")[
        "HostedZone"
    ]["Id"].rsplit("/", 1)[-1]
    records = {
        "signaling": f"signaling.{zone_name}",
        "coturn": f"turn.{zone_name}",
        "frp": f"frp.{zone_name}",
        "thingsboard": f"iot.{zone_name}",
    }
    # TURN relays hand out the instance's own public address.
    record_addresses = {n: ("public" if n in ("coturn", "frp") else "private") for n in records}

    def _primary_address(n: str) -> str:
        ips = public_ips if record_addresses[n] == "public" else private_ips
        return ips[n]["primary"]

    changes = [
        {
            "Action": "UPSERT",
            "ResourceRecordSet": {
                "Name": rec,
                "Type": "A",
                "TTL": 60,
                "ResourceRecords": [
                    {"Value": eip["PublicIp"] if n == "frp" else _primary_address(n)}
                ],
            },
        }
        for n, rec in records.items()
    ]
    r53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": changes})

    topic = sns.create_topic(Name=TOPIC_NAME)["TopicArn"]
    queue = sqs.create_queue(QueueName=f"{prefix}-{QUEUE_NAME}"[:80])["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    account = topic.split(":")[4]
    return Topology(
        endpoint_url=endpoint_url,
        region=region,
        account=account,
        vpc_id=vpc,
        public_subnets=public,
        private_subnets=private,
        instances=instances,
        private_ips=private_ips,
        target_groups=target_groups,
        service_target_groups=service_tgs,
        alb_arn=alb,
        nlb_arn=nlb,
        eip_allocation=eip["AllocationId"],
        eip_public_ip=eip["PublicIp"],
        zone_id=zone_id,
        zone_name=zone_name,
        records=records,
        record_addresses=record_addresses,
        route_tables=route_tables,
        topic_arn=topic,
        queue_url=queue,
        extra={"enis": enis, "public_ips": public_ips, "public_route_table": public_rt, **extra},
    )


def _second_nat(ec2: Any, subnet: str, project_tag: str, prefix: str) -> dict[str, str]:
    """The NAT instance of AZ b, tagged as the seed's NAT primary is."""
    inst = ec2.run_instances(
        ImageId=_AMI,
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.small",
        SubnetId=subnet,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": _tags(
                    Name=f"{prefix}-nat-secondary",
                    Project=project_tag,
                    Service="nat",
                    Role="primary",
                ),
            }
        ],
    )["Instances"][0]
    ec2.modify_instance_attribute(InstanceId=inst["InstanceId"], SourceDestCheck={"Value": False})
    return {
        "instance_id": inst["InstanceId"],
        "private_ip": inst["PrivateIpAddress"],
        "eni": inst["NetworkInterfaces"][0]["NetworkInterfaceId"],
    }


_clients: dict[tuple[str, str, str], Any] = {}


def moto_client(endpoint_url: str, region: str, service: str) -> Any:
    """Clients are cached: making one loads its service model (~0.1 s), and
    tests seed a fresh topology for every test."""
    key = (endpoint_url, region, service)
    if key not in _clients:
        session = boto3.session.Session(
            region_name=region, aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        _clients[key] = session.client(service, endpoint_url=endpoint_url)
    return _clients[key]


def read_notifications(topology: Topology, *, wait: float = 0.0) -> list[dict[str, Any]]:
    """Drain the SQS queue subscribed to the topic: the published messages
    (subject and parsed JSON message), oldest first."""
    check_loopback(topology.endpoint_url)
    sqs = moto_client(topology.endpoint_url, topology.region, "sqs")
    out: list[dict[str, Any]] = []
    while True:
        resp = sqs.receive_message(
            QueueUrl=topology.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=int(wait)
        )
        msgs = resp.get("Messages", [])
        if not msgs:
            return out
        for m in msgs:
            body = json.loads(m["Body"])
            try:
                message = json.loads(body.get("Message", ""))
            except ValueError:
                message = body.get("Message")
            out.append({"subject": body.get("Subject"), "message": message})
            sqs.delete_message(QueueUrl=topology.queue_url, ReceiptHandle=m["ReceiptHandle"])
        wait = 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jupiterd.sandbox.seed", description="Seed a loopback AWS endpoint (moto)."
    )
    p.add_argument("--endpoint", required=True, help="e.g. http://127.0.0.1:5000")
    p.add_argument("--region", default="ap-southeast-2")
    args = p.parse_args(argv)
    try:
        topo = seed(args.endpoint, args.region)
    except SeedError as exc:
        print(f"seed: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(topo), indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
