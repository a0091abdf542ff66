"""The AWS inventory: what EC2, ELB, Route 53 and the route tables say.

``AwsInventory.facts()`` reads, for every configured service, its two
instances (by id, or by the tags Project/Service/Role), their state,
addresses, network interface and maintenance tag, and where each attachment
points (target group registrations and health, the Elastic IP association,
the Route 53 record values, the 0.0.0.0/0 route targets). ``snapshot()``
turns those facts into the daemon's ``ServiceView``s. It is cheap on
purpose: one DescribeInstances for all services (two when some instances
are given by id), one DescribeTargetGroups, one DescribeAddresses, one
DescribeRouteTables, and one call per target group and per record, all
concurrent. Read-only: nothing here changes AWS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from jupiterd.aws.client import Aws, AwsNotFound
from jupiterd.config import Config, InstanceRef
from jupiterd.core.inventory import InstanceInfo, ServiceView
from jupiterd.core.plan import (
    MISSING,
    EipFacts,
    InstanceFacts,
    RecordFacts,
    RouteTableFacts,
    ServiceFacts,
    TargetGroupFacts,
    attachment_users,
    normalize_record_name,
    service_status,
    sharing_services,
    zone_key,
)
from jupiterd.core.types import TERMINATED_STATES, Role
from jupiterd.telemetry.metrics import Metrics

_ROLES = (Role.PRIMARY, Role.BACKUP)


def _tags(inst: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in inst.get("Tags", []) or []}


def _eni(inst: Mapping[str, Any]) -> str | None:
    nics = inst.get("NetworkInterfaces") or []
    for nic in nics:
        if nic.get("Attachment", {}).get("DeviceIndex") == 0:
            return str(nic["NetworkInterfaceId"])
    return str(nics[0]["NetworkInterfaceId"]) if nics else None


def _instances(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [i for r in response.get("Reservations", []) for i in r.get("Instances", [])]


class AwsInventory:
    def __init__(
        self, config: Config, aws: Aws | None = None, *, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.aws = (
            aws if aws is not None else Aws(config.aws, metrics, cache_dir=Path(config.state_dir))
        )

    async def snapshot(self) -> Mapping[str, ServiceView]:
        facts = await self.facts()
        return {name: self.view(f) for name, f in facts.items()}

    def view(self, facts: ServiceFacts) -> ServiceView:
        status = service_status(self.config, facts.service, facts)
        infos = {
            r: InstanceInfo(
                facts.instance(r).instance_id,
                facts.instance(r).address,
                facts.instance(r).state,
                maintenance=facts.instance(r).maintenance,
            )
            for r in _ROLES
        }
        return ServiceView(infos[Role.PRIMARY], infos[Role.BACKUP], status.active, status.notes)

    async def facts(self, services: Iterable[str] | None = None) -> dict[str, ServiceFacts]:
        """The facts of ``services`` (default: all). A service sharing an
        instance (a pool's member) also gets ``in_use``: the attachments of
        the others that point at its instances, read in the same calls."""
        names = list(services) if services is not None else list(self.config.services)
        wanted = dict.fromkeys(names)
        for n in names:
            wanted.update(dict.fromkeys(sharing_services(self.config, n)))
        out = await self._facts(list(wanted))
        return {
            n: replace(out[n], in_use=attachment_users(self.config, out, n))
            if sharing_services(self.config, n)
            else out[n]
            for n in names
        }

    async def _facts(self, names: list[str]) -> dict[str, ServiceFacts]:
        svcs = {n: self.config.services[n] for n in names}
        tgs: dict[str, int | None] = {}
        eips: list[str] = []
        records: dict[tuple[str, str, str], None] = {}
        rtbs: dict[str, None] = {}
        for svc in svcs.values():
            for tg in svc.attachments.target_groups:
                tgs.setdefault(tg.arn, tg.port)
            if svc.attachments.elastic_ip:
                eips.append(svc.attachments.elastic_ip)
            for rec in svc.attachments.route53:
                records[(rec.zone_id, rec.name, rec.type)] = None
            rtbs.update(dict.fromkeys(svc.attachments.route_tables))
        instances, tg_facts, eip_facts, record_facts, rtb_facts = await asyncio.gather(
            self._instances(svcs),
            self._target_groups(tgs),
            self._eips(eips),
            asyncio.gather(*(self._record(*k) for k in records)),
            self._route_tables(list(rtbs)),
        )
        out: dict[str, ServiceFacts] = {}
        for name, svc in svcs.items():
            att = svc.attachments
            p, b = instances[(name, Role.PRIMARY)], instances[(name, Role.BACKUP)]
            # A target's port is the service's own when two services share a group.
            tg_list = []
            for tg in att.target_groups:
                f = tg_facts[tg.arn]
                if f.exists and tg.port is not None and tg.port != f.port:
                    f = TargetGroupFacts(
                        f.arn,
                        True,
                        tg.port,
                        f.target_type,
                        f.health_check_enabled,
                        f.load_balancers,
                        f.health,
                    )
                tg_list.append(f)
            out[name] = ServiceFacts(
                name,
                p,
                b,
                target_groups=tuple(tg_list),
                elastic_ip=eip_facts.get(att.elastic_ip) if att.elastic_ip else None,
                records=tuple(
                    r
                    for r in record_facts
                    if any(
                        zone_key(r.zone_id) == zone_key(rec.zone_id)
                        and normalize_record_name(r.name) == normalize_record_name(rec.name)
                        and r.type == rec.type
                        for rec in att.route53
                    )
                ),
                route_tables=tuple(rtb_facts[r] for r in dict.fromkeys(att.route_tables)),
            )
        return out

    # -- instances

    async def _instances(self, svcs: Mapping[str, Any]) -> dict[tuple[str, Role], InstanceFacts]:
        # A pool's standby is the backup of every member: an id may name
        # several (service, role) keys, and each gets the instance's facts.
        by_id: dict[str, list[tuple[str, Role]]] = {}
        by_tag: list[tuple[str, Role]] = []
        for name, svc in svcs.items():
            for role in _ROLES:
                ref: InstanceRef = svc.primary if role is Role.PRIMARY else svc.backup
                if ref.instance_id:
                    by_id.setdefault(ref.instance_id, []).append((name, role))
                else:
                    by_tag.append((name, role))
        calls = []
        if by_id:
            calls.append(
                self.aws.paginate(
                    "ec2",
                    "DescribeInstances",
                    resource="instances " + ", ".join(by_id),
                    Filters=[{"Name": "instance-id", "Values": list(by_id)}],
                )
            )
        if by_tag:
            calls.append(
                self.aws.paginate(
                    "ec2",
                    "DescribeInstances",
                    resource=f"instances tagged Project={self.config.project_tag}",
                    Filters=[
                        {"Name": "tag:Project", "Values": [self.config.project_tag]},
                        {"Name": "tag:Service", "Values": sorted({n for n, _ in by_tag})},
                    ],
                )
            )
        found: list[dict[str, Any]] = []
        for resp in await asyncio.gather(*calls):
            found += _instances(resp)
        out: dict[tuple[str, Role], InstanceFacts] = {}
        for iid, keys in by_id.items():
            match = [i for i in found if i.get("InstanceId") == iid]
            for key in keys:
                out[key] = (
                    self._instance_facts(key, match[0])
                    if match
                    else InstanceFacts(key[1], iid, MISSING, address=self._ref(key).address)
                )
        for key in by_tag:
            name, role = key
            match = [
                i
                for i in found
                if _tags(i).get("Service") == name and _tags(i).get("Role") == str(role)
            ]
            live = [i for i in match if i["State"]["Name"] not in TERMINATED_STATES]
            if len(live) > 1:
                ids = ", ".join(sorted(i["InstanceId"] for i in live))
                out[key] = InstanceFacts(
                    role,
                    None,
                    MISSING,
                    address=self._ref(key).address,
                    problem=f"{len(live)} live instances carry its tags ({ids}): "
                    "set its instance_id in the configuration",
                )
            elif live or match:
                pick = live[0] if live else max(match, key=lambda i: str(i.get("LaunchTime")))
                out[key] = self._instance_facts(key, pick)
            else:
                out[key] = InstanceFacts(role, None, MISSING, address=self._ref(key).address)
        return out

    def _ref(self, key: tuple[str, Role]) -> InstanceRef:
        svc = self.config.services[key[0]]
        return svc.primary if key[1] is Role.PRIMARY else svc.backup

    def _instance_facts(self, key: tuple[str, Role], inst: Mapping[str, Any]) -> InstanceFacts:
        ref = self._ref(key)
        private = inst.get("PrivateIpAddress")
        return InstanceFacts(
            role=key[1],
            instance_id=str(inst["InstanceId"]),
            state=str(inst["State"]["Name"]),
            private_ip=private,
            public_ip=inst.get("PublicIpAddress"),
            eni_id=_eni(inst),
            source_dest_check=inst.get("SourceDestCheck"),
            address=ref.address or private,
            maintenance=self.config.guards.maintenance_tag in _tags(inst),
        )

    # -- target groups

    async def _target_groups(self, tgs: Mapping[str, int | None]) -> dict[str, TargetGroupFacts]:
        if not tgs:
            return {}
        arns = list(tgs)
        described: dict[str, dict[str, Any]] = {}
        try:
            resp = await self.aws.call(
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
                    r = await self.aws.call(
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
                resp = await self.aws.call(
                    "elbv2", "DescribeTargetHealth", resource=arn, TargetGroupArn=arn
                )
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
            )

        return {f.arn: f for f in await asyncio.gather(*(health(a) for a in arns))}

    # -- Elastic IPs

    async def _eips(self, ids: list[str]) -> dict[str, EipFacts]:
        if not ids:
            return {}
        resp = await self.aws.call(
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

    # -- Route 53

    async def record_set(self, zone_id: str, name: str, type_: str) -> dict[str, Any] | None:
        """The record set ``name`` ``type_`` of the hosted zone, as Route 53
        lists it; None when the zone has no such record."""
        zone = zone_key(zone_id)
        resp = await self.aws.call(
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

    async def _record(self, zone_id: str, name: str, type_: str) -> RecordFacts:
        try:
            rr = await self.record_set(zone_id, name, type_)
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

    # -- route tables

    async def _route_tables(self, ids: list[str]) -> dict[str, RouteTableFacts]:
        if not ids:
            return {}
        resp = await self.aws.paginate(
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
