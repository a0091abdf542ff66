"""``jupiterd discover``'s reading half: the account into plain ``Facts``.

Only describes and lists, all through ``Aws`` (their IAM actions are
``jupiterd.core.iam.DISCOVER_ACTIONS``): the instances tagged
``Project=<project>`` (not terminated), their security groups, the Elastic
IPs, the route tables and target groups of their VPCs with each group's
registered targets, every hosted zone's A/AAAA records, and the SNS
topics. A part that cannot be read for lack of permission is noted in
``Facts.unread`` and the rest goes on; no instance readable is an error.
"""

from __future__ import annotations

import asyncio
from typing import Any

from jupiterd.aws.client import Aws, AwsAccessDenied
from jupiterd.core.discover import (
    PROBE_TAG,
    ElasticIp,
    Facts,
    Instance,
    PortRange,
    Record,
    RouteTable,
    TargetGroup,
)

_LIVE = ["pending", "running", "stopping", "stopped"]


async def read_account(aws: Aws, project: str, region: str) -> Facts:
    resp = await aws.paginate(
        "ec2",
        "DescribeInstances",
        Filters=[
            {"Name": "tag:Project", "Values": [project]},
            {"Name": "instance-state-name", "Values": _LIVE},
        ],
    )
    raw = [i for r in resp.get("Reservations", []) for i in r.get("Instances", [])]
    instances = tuple(_instance(i) for i in raw)
    endpoint = aws.config.endpoint_url
    if not instances:
        return Facts(project, region, endpoint)
    vpcs = sorted({i["VpcId"] for i in raw if i.get("VpcId")})
    groups = sorted({sg for i in instances for sg in i.security_groups})
    unread: list[str] = []
    sgs, eips, tables, tgs, records, topics = await asyncio.gather(
        _guard(unread, "security groups", _security_groups(aws, groups), {}),
        _guard(unread, "Elastic IPs", _elastic_ips(aws), ()),
        _guard(unread, "route tables", _route_tables(aws, vpcs), ()),
        _guard(unread, "target groups", _target_groups(aws, vpcs), ()),
        _guard(unread, "Route 53 records", _records(aws), ()),
        _guard(unread, "SNS topics", _topics(aws), ()),
    )
    return Facts(
        project,
        region,
        endpoint,
        instances,
        target_groups=tgs,
        elastic_ips=eips,
        records=records,
        route_tables=tables,
        topics=topics,
        security_groups=sgs,
        unread=tuple(unread),
    )


async def _guard(unread: list[str], what: str, read: Any, empty: Any) -> Any:
    try:
        return await read
    except AwsAccessDenied as exc:
        unread.append(f"could not read the {what}: {exc}; attachments of that kind are missing")
        return empty


def _tags(d: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in d.get("Tags", []) or []}


def _instance(i: dict[str, Any]) -> Instance:
    tags = _tags(i)
    return Instance(
        instance_id=i["InstanceId"],
        service=tags.get("Service") or None,
        role=(tags.get("Role") or "").strip().lower() or None,
        name=tags.get("Name") or None,
        az=i.get("Placement", {}).get("AvailabilityZone", ""),
        state=i.get("State", {}).get("Name", "unknown"),
        private_ip=i.get("PrivateIpAddress") or None,
        public_ip=i.get("PublicIpAddress") or None,
        source_dest_check=bool(i.get("SourceDestCheck", True)),
        enis=tuple(n["NetworkInterfaceId"] for n in i.get("NetworkInterfaces", [])),
        security_groups=tuple(g["GroupId"] for g in i.get("SecurityGroups", [])),
        probe_tag=tags.get(PROBE_TAG) or None,
    )


async def _security_groups(aws: Aws, ids: list[str]) -> dict[str, tuple[PortRange, ...]]:
    if not ids:
        return {}
    resp = await aws.paginate("ec2", "DescribeSecurityGroups", GroupIds=ids)
    out: dict[str, tuple[PortRange, ...]] = {}
    for g in resp.get("SecurityGroups", []):
        out[g["GroupId"]] = tuple(
            PortRange(
                str(p.get("IpProtocol", "-1")),
                int(p.get("FromPort", 0) or 0),
                int(p.get("ToPort", 65535) if p.get("ToPort") is not None else 65535),
            )
            for p in g.get("IpPermissions", [])
        )
    return out


async def _elastic_ips(aws: Aws) -> tuple[ElasticIp, ...]:
    resp = await aws.call("ec2", "DescribeAddresses")
    return tuple(
        ElasticIp(a["AllocationId"], a.get("PublicIp", ""), a.get("InstanceId") or None)
        for a in resp.get("Addresses", [])
        if a.get("AllocationId")
    )


async def _route_tables(aws: Aws, vpcs: list[str]) -> tuple[RouteTable, ...]:
    resp = await aws.paginate(
        "ec2", "DescribeRouteTables", Filters=[{"Name": "vpc-id", "Values": vpcs}]
    )
    out = []
    for rt in resp.get("RouteTables", []):
        for r in rt.get("Routes", []):
            if r.get("DestinationCidrBlock") == "0.0.0.0/0":
                eni, inst = r.get("NetworkInterfaceId"), r.get("InstanceId")
                if eni or inst:
                    out.append(RouteTable(rt["RouteTableId"], eni, inst))
    return tuple(out)


async def _target_groups(aws: Aws, vpcs: list[str]) -> tuple[TargetGroup, ...]:
    resp = await aws.paginate("elbv2", "DescribeTargetGroups")
    groups = [
        g
        for g in resp.get("TargetGroups", [])
        if g.get("TargetType", "instance") == "instance" and g.get("VpcId") in vpcs
    ]

    async def one(g: dict[str, Any]) -> TargetGroup:
        arn = g["TargetGroupArn"]
        health = await aws.call("elbv2", "DescribeTargetHealth", resource=arn, TargetGroupArn=arn)
        targets = tuple(
            (d["Target"]["Id"], d["Target"].get("Port"))
            for d in health.get("TargetHealthDescriptions", [])
        )
        return TargetGroup(
            arn, g.get("TargetGroupName", arn), g.get("Port"), g.get("Protocol"), targets
        )

    return tuple(await asyncio.gather(*(one(g) for g in groups)))


async def _records(aws: Aws) -> tuple[Record, ...]:
    zones = (await aws.paginate("route53", "ListHostedZones")).get("HostedZones", [])

    async def one(zone: dict[str, Any]) -> list[Record]:
        zid = zone["Id"].rsplit("/", 1)[-1]
        resp = await aws.paginate(
            "route53", "ListResourceRecordSets", resource=f"hostedzone/{zid}", HostedZoneId=zid
        )
        return [
            Record(
                zid,
                r["Name"],
                r["Type"],
                tuple(v["Value"] for v in r.get("ResourceRecords", [])),
                r.get("SetIdentifier"),
            )
            for r in resp.get("ResourceRecordSets", [])
            if r["Type"] in ("A", "AAAA") and r.get("ResourceRecords")
        ]

    found = await asyncio.gather(*(one(z) for z in zones))
    return tuple(r for rs in found for r in rs)


async def _topics(aws: Aws) -> tuple[str, ...]:
    resp = await aws.paginate("sns", "ListTopics")
    return tuple(t["TopicArn"] for t in resp.get("Topics", []))
