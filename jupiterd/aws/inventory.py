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
concurrent (the per-attachment readers are in ``facts_reader``). Read-only:
nothing here changes AWS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from jupiterd.aws import facts_reader
from jupiterd.aws.client import Aws
from jupiterd.config import Config, InstanceRef
from jupiterd.core.inventory import InstanceInfo, ServiceView
from jupiterd.core.plan import (
    MISSING,
    InstanceFacts,
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


def _hibernation(inst: Mapping[str, Any]) -> bool | None:
    """HibernationOptions.Configured; None when EC2 did not say."""
    opts = inst.get("HibernationOptions")
    return bool(opts.get("Configured")) if isinstance(opts, Mapping) else None


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
            facts_reader.target_groups(self.aws, tgs),
            facts_reader.elastic_ips(self.aws, eips),
            asyncio.gather(*(facts_reader.record(self.aws, *k) for k in records)),
            facts_reader.route_tables(self.aws, list(rtbs)),
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
            instance_type=inst.get("InstanceType"),
            hibernation_configured=_hibernation(inst),
        )

    async def record_set(self, zone_id: str, name: str, type_: str) -> dict[str, Any] | None:
        """The record set ``name`` ``type_`` of the hosted zone, as Route 53
        lists it; None when the zone has no such record."""
        return await facts_reader.record_set(self.aws, zone_id, name, type_)
