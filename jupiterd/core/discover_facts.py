"""The plain facts ``jupiterd discover`` reads from an account, and the
decisions made of them (``jupiterd.core.discover``). Pure data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Instance:
    instance_id: str
    service: str | None
    role: str | None
    name: str | None
    az: str
    state: str
    private_ip: str | None
    public_ip: str | None
    source_dest_check: bool
    enis: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    probe_tag: str | None = None


@dataclass(frozen=True, slots=True)
class TargetGroup:
    arn: str
    name: str
    port: int | None
    protocol: str | None
    targets: tuple[tuple[str, int | None], ...]  # (instance id, registered port)


@dataclass(frozen=True, slots=True)
class ElasticIp:
    allocation_id: str
    public_ip: str
    instance_id: str | None


@dataclass(frozen=True, slots=True)
class Record:
    zone_id: str
    name: str
    type: str
    values: tuple[str, ...]
    set_identifier: str | None = None


@dataclass(frozen=True, slots=True)
class RouteTable:
    route_table_id: str
    default_eni: str | None
    default_instance: str | None


@dataclass(frozen=True, slots=True)
class PortRange:
    protocol: str
    from_port: int
    to_port: int


@dataclass(frozen=True)
class Facts:
    project: str
    region: str
    endpoint_url: str | None = None
    instances: tuple[Instance, ...] = ()
    target_groups: tuple[TargetGroup, ...] = ()
    elastic_ips: tuple[ElasticIp, ...] = ()
    records: tuple[Record, ...] = ()
    route_tables: tuple[RouteTable, ...] = ()
    topics: tuple[str, ...] = ()
    security_groups: Mapping[str, tuple[PortRange, ...]] = field(default_factory=dict)
    # What could not be read at all (an access denied), one sentence each.
    unread: tuple[str, ...] = ()


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Probe:
    kind: str
    port: int | None
    why: str
    decided: bool


@dataclass(frozen=True, slots=True)
class Attached:
    target_groups: tuple[tuple[str, int | None], ...] = ()  # (ARN, port if not the group's)
    elastic_ip: str | None = None
    route53: tuple[tuple[str, str, str, str], ...] = ()  # (zone id, name, type, private|public)
    route_tables: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.target_groups or self.elastic_ip or self.route53 or self.route_tables)


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    instance: Instance
    attachments: Attached


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    probe: Probe
    primary: Instance
    backup: Instance
    attachments: Attached


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    probe: Probe
    members: tuple[Member, ...]
    standby: Instance


@dataclass(frozen=True, slots=True)
class Note:
    """Something undecided or to do: ``where`` is a service, pool or key."""

    where: str
    text: str


@dataclass(frozen=True)
class Discovery:
    project: str
    region: str
    endpoint_url: str | None
    topic: str | None
    services: tuple[Service, ...]
    pools: tuple[Pool, ...]
    notes: tuple[Note, ...]

    @property
    def usable(self) -> bool:
        return bool(self.services or self.pools)
