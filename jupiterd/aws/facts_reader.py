"""The per-attachment readers of the inventory: target groups (with their
targets' health), Elastic IPs, Route 53 record sets and route tables, each
read with as few calls as AWS allows. Read-only."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from jupiterd.aws.client import Aws, AwsNotFound
from jupiterd.core.plan import (
    EipFacts,
    RecordFacts,
    RouteTableFacts,
    TargetGroupFacts,
    normalize_record_name,
    zone_key,
)

# --------------------------------------------------------------------------- target groups


async def target_groups(aws: Aws, tgs: Mapping[str, int | None]) -> dict[str, TargetGroupFacts]:
    if not tgs:
        return {}
    arns = list(tgs)
    described: dict[str, dict[str, Any]] = {}
    try:
        resp = await aws.call(
            "elbv2",
            "DescribeTargetGroups",
            resource="target groups " + ", ".join(arns),
            TargetGroupArns=arns,
        )
        described = {t["TargetGroupArn"]: t for t in resp.get("TargetGroups", [])}
    except AwsNotFound:
        # One missing group fails the whole call: ask one by one.
        async def one(arn: str) -> dict[str, Any] | None:
            try:
                r = await aws.call(
                    "elbv2", "DescribeTargetGroups", resource=arn, TargetGroupArns=[arn]
                )
            except AwsNotFound:
                return None
            groups = r.get("TargetGroups", [])
            return groups[0] if groups else None

        for arn, tg in zip(arns, await asyncio.gather(*(one(a) for a in arns)), strict=True):
            if tg is not None:
                described[arn] = tg

    async def health(arn: str) -> TargetGroupFacts:
        tg = described.get(arn)
        if tg is None:
            return TargetGroupFacts(arn, False)
        try:
            resp = await aws.call("elbv2", "DescribeTargetHealth", resource=arn, TargetGroupArn=arn)
        except AwsNotFound:
            return TargetGroupFacts(arn, False)
        port = tgs[arn] or tg.get("Port")
        states: dict[str, tuple[str, str]] = {}
        for d in resp.get("TargetHealthDescriptions", []):
            target = d.get("Target", {})
            if port is not None and target.get("Port") not in (None, port):
                continue
            th = d.get("TargetHealth", {})
            states[str(target.get("Id"))] = (str(th.get("State")), str(th.get("Reason", "")))
        return TargetGroupFacts(
            arn,
            True,
            port,
            str(tg.get("TargetType", "instance")),
            bool(tg.get("HealthCheckEnabled", True)),
            tuple(tg.get("LoadBalancerArns", [])),
            states,
            tg.get("HealthCheckIntervalSeconds"),
            tg.get("HealthyThresholdCount"),
        )

    return {f.arn: f for f in await asyncio.gather(*(health(a) for a in arns))}


# --------------------------------------------------------------------------- Elastic IPs


async def elastic_ips(aws: Aws, ids: list[str]) -> dict[str, EipFacts]:
    if not ids:
        return {}
    resp = await aws.call(
        "ec2",
        "DescribeAddresses",
        resource="Elastic IPs " + ", ".join(ids),
        Filters=[{"Name": "allocation-id", "Values": ids}],
    )
    out = {i: EipFacts(i, False) for i in ids}
    for a in resp.get("Addresses", []):
        aid = a.get("AllocationId")
        if aid in out:
            out[aid] = EipFacts(
                aid, True, a.get("PublicIp"), a.get("InstanceId"), a.get("NetworkInterfaceId")
            )
    return out


# --------------------------------------------------------------------------- Route 53


async def record_set(aws: Aws, zone_id: str, name: str, type_: str) -> dict[str, Any] | None:
    """The record set ``name`` ``type_`` of the hosted zone, as Route 53
    lists it; None when the zone has no such record."""
    zone = zone_key(zone_id)
    resp = await aws.call(
        "route53",
        "ListResourceRecordSets",
        resource=f"hosted zone {zone}",
        HostedZoneId=zone,
        StartRecordName=name,
        StartRecordType=type_,
        MaxItems="1",
    )
    found: list[dict[str, Any]] = resp.get("ResourceRecordSets", [])
    for rr in found:
        if normalize_record_name(rr.get("Name", "")) == normalize_record_name(name) and (
            rr.get("Type") == type_
        ):
            return rr
    return None


async def record(aws: Aws, zone_id: str, name: str, type_: str) -> RecordFacts:
    try:
        rr = await record_set(aws, zone_id, name, type_)
    except AwsNotFound:
        return RecordFacts(zone_id, name, type_, False)
    if rr is None:
        return RecordFacts(zone_id, name, type_, False)
    return RecordFacts(
        zone_id,
        str(rr["Name"]),
        type_,
        True,
        rr.get("TTL"),
        tuple(v["Value"] for v in rr.get("ResourceRecords", [])),
        alias="AliasTarget" in rr,
        routing_policy="SetIdentifier" in rr,
    )


# --------------------------------------------------------------------------- route tables


async def route_tables(aws: Aws, ids: list[str]) -> dict[str, RouteTableFacts]:
    if not ids:
        return {}
    resp = await aws.paginate(
        "ec2",
        "DescribeRouteTables",
        resource="route tables " + ", ".join(ids),
        Filters=[{"Name": "route-table-id", "Values": ids}],
    )
    out = {i: RouteTableFacts(i, False) for i in ids}
    for rt in resp.get("RouteTables", []):
        rid = rt.get("RouteTableId")
        if rid not in out:
            continue
        default = next(
            (r for r in rt.get("Routes", []) if r.get("DestinationCidrBlock") == "0.0.0.0/0"),
            None,
        )
        if default is None:
            out[rid] = RouteTableFacts(rid, True, False)
        else:
            out[rid] = RouteTableFacts(
                rid,
                True,
                True,
                default.get("NetworkInterfaceId"),
                default.get("InstanceId"),
                default.get("State"),
            )
    return out
