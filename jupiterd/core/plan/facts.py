"""What the read-only describes returned about a service (the facts types
``aws.inventory`` fills), and the names and ARNs derived from it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jupiterd.config import Config
from jupiterd.core.types import TERMINATED_STATES, InstanceState, Role

# --------------------------------------------------------------------------- facts

MISSING = "missing"  # an instance state: no instance was found
GONE_STATES = TERMINATED_STATES | {MISSING}


@dataclass(frozen=True, slots=True)
class InstanceFacts:
    role: Role
    instance_id: str | None
    state: str  # EC2's state name (InstanceState), or MISSING
    private_ip: str | None = None
    public_ip: str | None = None
    eni_id: str | None = None  # the primary network interface (device index 0)
    source_dest_check: bool | None = None
    address: str | None = None  # what probes target: the configured address, else private IP
    maintenance: bool = False
    problem: str | None = None  # why it could not be identified (e.g. ambiguous tags)
    instance_type: str | None = None
    hibernation_configured: bool | None = None  # HibernationOptions.Configured; None: unknown

    @property
    def running(self) -> bool:
        return self.state == InstanceState.RUNNING

    def describe(self) -> str:
        return f"the {self.role} instance {self.instance_id or '(not found)'}"


@dataclass(frozen=True, slots=True)
class TargetGroupFacts:
    arn: str
    exists: bool
    port: int | None = None  # the port this service's targets are registered on
    target_type: str = "instance"
    health_check_enabled: bool = True
    load_balancers: tuple[str, ...] = ()
    # target id -> (state, reason) as DescribeTargetHealth reports them
    health: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    health_check_interval: int | None = None  # seconds (HealthCheckIntervalSeconds)
    healthy_threshold: int | None = None  # consecutive passes (HealthyThresholdCount)

    @property
    def health_check_seconds(self) -> int | None:
        """Up to how long the load balancer's checks keep a new, already
        serving target from traffic: interval x healthy threshold."""
        if not self.health_check_enabled or not (
            self.health_check_interval and self.healthy_threshold
        ):
            return None
        return self.health_check_interval * self.healthy_threshold

    @property
    def name(self) -> str:
        return target_group_name(self.arn)


@dataclass(frozen=True, slots=True)
class EipFacts:
    allocation_id: str
    exists: bool
    public_ip: str | None = None
    instance_id: str | None = None
    eni_id: str | None = None


@dataclass(frozen=True, slots=True)
class RecordFacts:
    zone_id: str
    name: str
    type: str
    exists: bool
    ttl: int | None = None
    values: tuple[str, ...] = ()
    alias: bool = False
    routing_policy: bool = False  # SetIdentifier: weighted, failover, latency...


@dataclass(frozen=True, slots=True)
class RouteTableFacts:
    route_table_id: str
    exists: bool
    has_default_route: bool = False
    eni_id: str | None = None
    instance_id: str | None = None
    state: str | None = None  # active / blackhole


@dataclass(frozen=True, slots=True)
class Fallback:
    """Where a NAT pool member's route tables go at once while the standby
    starts: an instance that already forwards for another member (that
    member's own, or the standby serving it), found running and passing
    the pool's probe at preflight. ``instance_id`` None: there is none,
    and ``reason`` says why."""

    instance_id: str | None
    eni_id: str | None = None
    via: str = ""  # "nat-b's instance i-..."
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ServiceFacts:
    service: str
    primary: InstanceFacts
    backup: InstanceFacts
    target_groups: tuple[TargetGroupFacts, ...] = ()
    elastic_ip: EipFacts | None = None
    records: tuple[RecordFacts, ...] = ()
    route_tables: tuple[RouteTableFacts, ...] = ()
    # Instance id -> the other services' attachments pointing at it (a
    # pool's standby serving another member): such an instance is never
    # stopped by this service's plans.
    in_use: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # A peer_then_standby pool member's failover: where its routes go first
    # (None: not looked for, the standby-only plan).
    fallback: Fallback | None = None

    def instance(self, role: Role) -> InstanceFacts:
        return self.primary if role is Role.PRIMARY else self.backup

    def target_group(self, arn: str) -> TargetGroupFacts | None:
        return next((t for t in self.target_groups if t.arn == arn), None)

    def record(self, zone_id: str, name: str, type_: str) -> RecordFacts | None:
        z, n = zone_key(zone_id), normalize_record_name(name)
        for r in self.records:
            if zone_key(r.zone_id) == z and normalize_record_name(r.name) == n and r.type == type_:
                return r
        return None

    def route_table(self, rtb: str) -> RouteTableFacts | None:
        return next((r for r in self.route_tables if r.route_table_id == rtb), None)


# --------------------------------------------------------------------------- names and ARNs


def target_group_name(arn: str) -> str:
    """``arn:...:targetgroup/NAME/ID`` -> ``NAME``."""
    tail = arn.rsplit(":", 1)[-1]
    parts = tail.split("/")
    return parts[1] if len(parts) >= 3 else tail


def zone_key(zone_id: str) -> str:
    return zone_id.rsplit("/", 1)[-1]


def normalize_record_name(name: str) -> str:
    """Route 53 answers ``Sig.Example.com.`` and escapes ``*`` as ``\\052``."""
    return name.replace("\\052", "*").rstrip(".").lower()


_ARN_RE = re.compile(r"^arn:(aws[a-z-]*):[a-z0-9-]+:([a-z0-9-]*):(\d{12}):")


@dataclass(frozen=True, slots=True)
class ArnContext:
    partition: str
    region: str
    account: str  # "*" when no configured ARN names it

    @classmethod
    def from_config(cls, config: Config) -> ArnContext:
        arns: list[str] = [a for a in (config.sns_topic_arn,) if a]
        for svc in config.services.values():
            arns += [t.arn for t in svc.attachments.target_groups]
            if svc.sns_topic_arn:
                arns.append(svc.sns_topic_arn)
        for arn in arns:
            m = _ARN_RE.match(arn)
            if m:
                return cls(m.group(1), config.aws.region, m.group(3))
        return cls("aws", config.aws.region, "*")

    def ec2(self, kind: str, ident: str) -> str:
        return f"arn:{self.partition}:ec2:{self.region}:{self.account}:{kind}/{ident}"

    def hosted_zone(self, zone_id: str) -> str:
        return f"arn:{self.partition}:route53:::hostedzone/{zone_key(zone_id)}"

    def route53_change(self) -> str:
        return f"arn:{self.partition}:route53:::change/*"


def _unique_tgs(tgs: Sequence[Any]) -> list[tuple[str, str, int | None]]:
    seen: dict[str, tuple[str, str, int | None]] = {}
    for tg in tgs:
        seen.setdefault(tg.arn, (target_group_name(tg.arn), tg.arn, tg.port))
    return list(seen.values())
