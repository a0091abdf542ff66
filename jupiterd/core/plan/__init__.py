"""Failover plans, and what AWS facts say about a service: pure, no I/O.

A plan is the ordered list of idempotent steps that moves a service's
traffic from one instance to the other (DESIGN.md "Health decisions"):
preflight, start the standby, wait until it passes its own probes, attach
traffic to it (target groups, Elastic IP, Route 53, NAT routes; independent
attachments run concurrently), detach the old instance, stop it, notify.
Each step declares the IAM actions it needs, with resource ARNs and
conditions, so a least-privilege policy and a dry run can be derived from
plans without touching AWS.

The facts types hold what the read-only describes returned
(``awsinventory`` fills them); the functions below turn them into the
answer to "which instance carries the traffic, and do the attachments agree"
and into preflight problems. Everything here is tested table-driven.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, Literal

from jupiterd.config import Config, Route53Record
from jupiterd.core.execution import Direction, direction_of
from jupiterd.core.types import Role

# --------------------------------------------------------------------------- facts

MISSING = "missing"  # an instance state: no instance was found
GONE_STATES = frozenset({"terminated", "shutting-down", MISSING})
STOPPED_STATES = frozenset({"stopped", "stopping"})


@dataclass(frozen=True, slots=True)
class InstanceFacts:
    role: Role
    instance_id: str | None
    state: str  # EC2's state name, or MISSING
    private_ip: str | None = None
    public_ip: str | None = None
    eni_id: str | None = None  # the primary network interface (device index 0)
    source_dest_check: bool | None = None
    address: str | None = None  # what probes target: the configured address, else private IP
    maintenance: bool = False
    problem: str | None = None  # why it could not be identified (e.g. ambiguous tags)

    @property
    def running(self) -> bool:
        return self.state == "running"

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
class ServiceFacts:
    service: str
    primary: InstanceFacts
    backup: InstanceFacts
    target_groups: tuple[TargetGroupFacts, ...] = ()
    elastic_ip: EipFacts | None = None
    records: tuple[RecordFacts, ...] = ()
    route_tables: tuple[RouteTableFacts, ...] = ()

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


# --------------------------------------------------------------------------- steps

Conditions = Mapping[str, Mapping[str, tuple[str, ...]]]


@dataclass(frozen=True, slots=True)
class Permission:
    """One IAM statement's worth: an action on resources, with conditions."""

    action: str  # "ec2:StartInstances"
    resources: tuple[str, ...] = ("*",)
    conditions: Conditions = field(default_factory=dict)


class Stage(IntEnum):
    PREFLIGHT = 1
    START = 2
    HEALTHY = 3
    ATTACH = 4
    DETACH = 5
    STOP = 6
    NOTIFY = 7


class StepKind(StrEnum):
    START_STANDBY = "start_standby"
    STANDBY_HEALTHY = "standby_healthy"
    SOURCE_DEST_CHECK = "source_dest_check"
    REGISTER_TARGET = "register_target"
    ASSOCIATE_EIP = "associate_eip"
    UPSERT_RECORD = "upsert_record"
    REPLACE_ROUTE = "replace_route"
    DEREGISTER_TARGET = "deregister_target"
    STOP_INSTANCE = "stop_instance"
    NOTIFY = "notify"


TRAFFIC_KINDS = frozenset(
    {
        StepKind.REGISTER_TARGET,
        StepKind.ASSOCIATE_EIP,
        StepKind.UPSERT_RECORD,
        StepKind.REPLACE_ROUTE,
    }
)


@dataclass(frozen=True, slots=True)
class Step:
    """One idempotent step. ``role`` is the instance it acts on or for;
    ``resource`` is what error messages name; ``after`` names steps of the
    same stage that must finish first (the NAT source/dest check before the
    routes)."""

    name: str
    kind: StepKind
    stage: Stage
    role: Role
    resource: str
    params: Mapping[str, Any] = field(default_factory=dict)
    permissions: tuple[Permission, ...] = ()
    after: tuple[str, ...] = ()

    @property
    def mutating(self) -> bool:
        return self.kind is not StepKind.STANDBY_HEALTHY


@dataclass(frozen=True, slots=True)
class Plan:
    service: str
    from_role: Role
    to_role: Role
    steps: tuple[Step, ...]

    @property
    def direction(self) -> Direction:
        return direction_of(self.to_role)

    def stages(self) -> list[tuple[Stage, tuple[Step, ...]]]:
        out: dict[Stage, list[Step]] = {}
        for s in self.steps:
            out.setdefault(s.stage, []).append(s)
        return [(stage, tuple(out[stage])) for stage in sorted(out)]

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def permissions(self) -> tuple[Permission, ...]:
        return merge_permissions(p for s in self.steps for p in s.permissions)


def merge_permissions(perms: Iterable[Permission]) -> tuple[Permission, ...]:
    """One entry per (action, conditions), resources united, order kept."""
    merged: dict[tuple[str, str], list[str]] = {}
    conds: dict[tuple[str, str], Conditions] = {}
    for p in perms:
        key = (p.action, repr(sorted((k, sorted(v.items())) for k, v in p.conditions.items())))
        res = merged.setdefault(key, [])
        conds[key] = p.conditions
        for r in p.resources:
            if r not in res:
                res.append(r)
    out = []
    for key, res in merged.items():
        resources = ("*",) if "*" in res else tuple(res)
        out.append(Permission(key[0], resources, conds[key]))
    return tuple(out)


# Read-only calls every plan makes (preflight, state checks, waits).
READ_PERMISSIONS = (
    Permission("ec2:DescribeInstances"),
    Permission("ec2:DescribeAddresses"),
    Permission("ec2:DescribeRouteTables"),
    Permission("elasticloadbalancing:DescribeTargetGroups"),
    Permission("elasticloadbalancing:DescribeTargetHealth"),
)


def _instance_resource(
    arns: ArnContext, config: Config, service: str, inst: InstanceFacts
) -> tuple[tuple[str, ...], Conditions]:
    """The instance's ARN; without an id (policy built before the instance
    exists), any instance carrying the service's tags."""
    if inst.instance_id:
        return (arns.ec2("instance", inst.instance_id),), {}
    return (arns.ec2("instance", "*"),), {
        "StringEquals": {
            "aws:ResourceTag/Project": (config.project_tag,),
            "aws:ResourceTag/Service": (service,),
            "aws:ResourceTag/Role": (str(inst.role),),
        }
    }


def _record_step_name(rec: Route53Record) -> str:
    return f"upsert_record:{normalize_record_name(rec.name)}/{rec.type}"


def build_plan(
    config: Config,
    service: str,
    to_role: Role,
    facts: ServiceFacts,
    *,
    stop_old: bool | None = None,
) -> Plan:
    """The steps that move ``service`` to ``to_role``. The list depends only
    on the configuration and the instances' identities, never on their
    current state: a resumed plan has the same step names as the first run,
    and each step checks AWS itself before acting."""
    svc = config.services[service]
    arns = ArnContext.from_config(config)
    from_role = to_role.other
    standby = facts.instance(to_role)
    old = facts.instance(from_role)
    s_res, s_cond = _instance_resource(arns, config, service, standby)
    o_res, o_cond = _instance_resource(arns, config, service, old)
    sid = standby.instance_id or f"({to_role})"
    oid = old.instance_id or f"({from_role})"
    att = svc.attachments
    steps: list[Step] = [
        Step(
            "start_standby",
            StepKind.START_STANDBY,
            Stage.START,
            to_role,
            sid,
            {"instance_id": standby.instance_id},
            (Permission("ec2:StartInstances", s_res, s_cond),),
        ),
        Step(
            "standby_healthy",
            StepKind.STANDBY_HEALTHY,
            Stage.HEALTHY,
            to_role,
            sid,
            {"instance_id": standby.instance_id},
        ),
    ]
    if att.route_tables:
        steps.append(
            Step(
                "source_dest_check",
                StepKind.SOURCE_DEST_CHECK,
                Stage.ATTACH,
                to_role,
                sid,
                {"instance_id": standby.instance_id},
                (Permission("ec2:ModifyInstanceAttribute", s_res, s_cond),),
            )
        )
    for name, arn, port in _unique_tgs(att.target_groups):
        steps.append(
            Step(
                f"register_target:{name}",
                StepKind.REGISTER_TARGET,
                Stage.ATTACH,
                to_role,
                arn,
                {"arn": arn, "port": port},
                (Permission("elasticloadbalancing:RegisterTargets", (arn,)),),
            )
        )
    if att.elastic_ip:
        eni = standby.eni_id or "*"
        steps.append(
            Step(
                f"associate_eip:{att.elastic_ip}",
                StepKind.ASSOCIATE_EIP,
                Stage.ATTACH,
                to_role,
                att.elastic_ip,
                {"allocation_id": att.elastic_ip},
                (
                    Permission(
                        "ec2:AssociateAddress",
                        (
                            arns.ec2("elastic-ip", att.elastic_ip),
                            *s_res,
                            arns.ec2("network-interface", eni),
                        ),
                    ),
                ),
            )
        )
    for rec in att.route53:
        norm = normalize_record_name(rec.name)
        steps.append(
            Step(
                _record_step_name(rec),
                StepKind.UPSERT_RECORD,
                Stage.ATTACH,
                to_role,
                f"{rec.name} {rec.type} in {zone_key(rec.zone_id)}",
                {
                    "zone_id": rec.zone_id,
                    "name": rec.name,
                    "type": rec.type,
                    "address": rec.address,
                    "ttl": rec.ttl,
                },
                (
                    Permission(
                        "route53:ChangeResourceRecordSets",
                        (arns.hosted_zone(rec.zone_id),),
                        {
                            "ForAllValues:StringEquals": {
                                "route53:ChangeResourceRecordSetsNormalizedRecordNames": (norm,),
                                "route53:ChangeResourceRecordSetsRecordTypes": (rec.type,),
                                "route53:ChangeResourceRecordSetsActions": ("UPSERT",),
                            }
                        },
                    ),
                    Permission("route53:ListResourceRecordSets", (arns.hosted_zone(rec.zone_id),)),
                    Permission("route53:GetChange", (arns.route53_change(),)),
                ),
            )
        )
    for rtb in dict.fromkeys(att.route_tables):
        steps.append(
            Step(
                f"replace_route:{rtb}",
                StepKind.REPLACE_ROUTE,
                Stage.ATTACH,
                to_role,
                rtb,
                {"route_table_id": rtb, "destination": "0.0.0.0/0"},
                (Permission("ec2:ReplaceRoute", (arns.ec2("route-table", rtb),)),),
                after=("source_dest_check",),
            )
        )
    for name, arn, port in _unique_tgs(att.target_groups):
        steps.append(
            Step(
                f"deregister_target:{name}",
                StepKind.DEREGISTER_TARGET,
                Stage.DETACH,
                from_role,
                arn,
                {"arn": arn, "port": port},
                (Permission("elasticloadbalancing:DeregisterTargets", (arn,)),),
            )
        )
    if svc.stop_old if stop_old is None else stop_old:
        steps.append(
            Step(
                "stop_old",
                StepKind.STOP_INSTANCE,
                Stage.STOP,
                from_role,
                oid,
                {"instance_id": old.instance_id},
                (Permission("ec2:StopInstances", o_res, o_cond),),
            )
        )
    topic = config.topic_for(service)
    if topic:
        steps.append(
            Step(
                "notify",
                StepKind.NOTIFY,
                Stage.NOTIFY,
                to_role,
                topic,
                {"topic_arn": topic},
                # GetTopicAttributes: a dry run's proof that the topic exists.
                (
                    Permission("sns:Publish", (topic,)),
                    Permission("sns:GetTopicAttributes", (topic,)),
                ),
            )
        )
    return Plan(service, from_role, to_role, tuple(steps))


def _unique_tgs(tgs: Sequence[Any]) -> list[tuple[str, str, int | None]]:
    seen: dict[str, tuple[str, str, int | None]] = {}
    for tg in tgs:
        seen.setdefault(tg.arn, (target_group_name(tg.arn), tg.arn, tg.port))
    return list(seen.values())


ROLLBACK_PREFIX = "rollback:"


def build_rollback(
    config: Config, plan: Plan, facts: ServiceFacts, *, started_standby: bool, traffic_moved: bool
) -> Plan:
    """Undo an interrupted plan: traffic back to the old instance (when any
    of it moved), the standby detached, and stopped again if this plan
    started it. The steps are the reverse plan's, renamed ``rollback:...``."""
    reverse = build_plan(config, plan.service, plan.from_role, facts, stop_old=started_standby)
    keep: list[Step] = []
    for s in reverse.steps:
        if s.kind in (StepKind.START_STANDBY, StepKind.NOTIFY, StepKind.SOURCE_DEST_CHECK):
            continue
        if s.kind is StepKind.STANDBY_HEALTHY and not traffic_moved:
            continue
        if (s.kind in TRAFFIC_KINDS or s.kind is StepKind.DEREGISTER_TARGET) and not traffic_moved:
            continue
        after = tuple(ROLLBACK_PREFIX + a for a in s.after if a != "source_dest_check")
        keep.append(
            Step(
                ROLLBACK_PREFIX + s.name.replace("stop_old", "stop_standby"),
                s.kind,
                s.stage,
                s.role,
                s.resource,
                s.params,
                s.permissions,
                after,
            )
        )
    return Plan(plan.service, plan.to_role, plan.from_role, tuple(keep))


def plan_permissions(plans: Iterable[Plan]) -> tuple[Permission, ...]:
    """Everything a set of plans needs, the read-only calls included."""
    return merge_permissions([*READ_PERMISSIONS, *(p for pl in plans for p in pl.permissions())])


# --------------------------------------------------------------------------- what AWS says

AttachmentKind = Literal["target_group", "elastic_ip", "route53", "route_table"]


@dataclass(frozen=True, slots=True)
class AttachmentState:
    kind: AttachmentKind
    name: str  # what a person calls it: the TG name, the EIP, the record, the table
    points_to: frozenset[Role]  # empty: neither instance (or not found)
    healthy: bool  # the instance(s) behind it are running (and healthy for a TG)
    detail: str

    @property
    def role(self) -> Role | None:
        return next(iter(self.points_to)) if len(self.points_to) == 1 else None


_UNREGISTERED = ("unused", "Target.NotRegistered")


def target_id(tg: TargetGroupFacts, inst: InstanceFacts) -> str | None:
    return inst.private_ip if tg.target_type == "ip" else inst.instance_id


def target_registered(state: tuple[str, str] | None) -> bool:
    """Registered and not on its way out."""
    return state is not None and state != _UNREGISTERED and state[0] != "draining"


def target_serving(tg: TargetGroupFacts, state: tuple[str, str] | None) -> bool:
    if state is None:
        return False
    if state[0] == "healthy":
        return True
    # Without health checks ELB reports 'unavailable' for a registered target.
    return not tg.health_check_enabled and state[0] == "unavailable"


def record_value(address: str, inst: InstanceFacts, eip: EipFacts | None) -> str | None:
    """The value a record of ``address`` ("private" or "public") must hold to
    point at ``inst``. A public record of a service with an Elastic IP holds
    the EIP, which moves with it."""
    if address == "private":
        return inst.private_ip
    if eip is not None and eip.public_ip:
        return eip.public_ip
    return inst.public_ip


def attachment_states(config: Config, service: str, facts: ServiceFacts) -> list[AttachmentState]:
    att = config.services[service].attachments
    roles = (Role.PRIMARY, Role.BACKUP)
    out: list[AttachmentState] = []
    for _name, arn, _port in _unique_tgs(att.target_groups):
        tg = facts.target_group(arn)
        name = target_group_name(arn)
        if tg is None or not tg.exists:
            out.append(AttachmentState("target_group", name, frozenset(), False, "not found"))
            continue
        points: set[Role] = set()
        parts: list[str] = []
        healthy = False
        for r in roles:
            tid = target_id(tg, facts.instance(r))
            st = tg.health.get(tid) if tid else None
            if target_registered(st):
                points.add(r)
                assert st is not None
                parts.append(f"{r} {st[0]}")
                healthy = healthy or target_serving(tg, st)
        ours = {target_id(tg, facts.instance(r)) for r in roles}
        others = sum(1 for t, st in tg.health.items() if t not in ours and target_registered(st))
        if others > 0:
            parts.append(f"{others} other target(s)")
        out.append(
            AttachmentState(
                "target_group",
                name,
                frozenset(points),
                healthy,
                ", ".join(parts) or "no targets registered",
            )
        )
    if att.elastic_ip:
        eip = facts.elastic_ip
        if eip is None or not eip.exists:
            out.append(
                AttachmentState("elastic_ip", att.elastic_ip, frozenset(), False, "not found")
            )
        else:
            on = [
                r
                for r in roles
                if eip.instance_id and facts.instance(r).instance_id == eip.instance_id
            ]
            detail = (
                f"{eip.public_ip} on the {on[0]}"
                if on
                else f"{eip.public_ip} on {eip.instance_id or 'nothing'}"
            )
            out.append(
                AttachmentState(
                    "elastic_ip",
                    att.elastic_ip,
                    frozenset(on),
                    bool(on) and facts.instance(on[0]).running,
                    detail,
                )
            )
    for rec in att.route53:
        label = f"{normalize_record_name(rec.name)} {rec.type}"
        rf = facts.record(rec.zone_id, rec.name, rec.type)
        if rf is None or not rf.exists:
            out.append(AttachmentState("route53", label, frozenset(), False, "not found"))
            continue
        if rf.alias:
            out.append(AttachmentState("route53", label, frozenset(), False, "an alias record"))
            continue
        values = set(rf.values)
        eip = facts.elastic_ip
        if rec.address == "public" and eip is not None and eip.public_ip in values:
            # Both roles map to the EIP: the record follows whoever holds it.
            holder = eip_role(facts)
            on = [holder] if holder else []
        else:
            on = [r for r in roles if record_value(rec.address, facts.instance(r), eip) in values]
        out.append(
            AttachmentState(
                "route53",
                label,
                frozenset(on),
                bool(on) and all(facts.instance(r).running for r in on),
                ", ".join(rf.values) or "no values",
            )
        )
    for rtb in dict.fromkeys(att.route_tables):
        rt = facts.route_table(rtb)
        if rt is None or not rt.exists:
            out.append(AttachmentState("route_table", rtb, frozenset(), False, "not found"))
            continue
        if not rt.has_default_route:
            out.append(
                AttachmentState("route_table", rtb, frozenset(), False, "no 0.0.0.0/0 route")
            )
            continue
        on = [
            r
            for r in roles
            if (rt.eni_id and facts.instance(r).eni_id == rt.eni_id)
            or (rt.instance_id and facts.instance(r).instance_id == rt.instance_id)
        ]
        via = rt.eni_id or rt.instance_id or "another target"
        out.append(
            AttachmentState(
                "route_table",
                rtb,
                frozenset(on),
                bool(on) and facts.instance(on[0]).running and rt.state != "blackhole",
                f"0.0.0.0/0 via {via}" + (f" ({rt.state})" if rt.state == "blackhole" else ""),
            )
        )
    return out


def eip_role(facts: ServiceFacts) -> Role | None:
    eip = facts.elastic_ip
    if eip is None or not eip.instance_id:
        return None
    for r in (Role.PRIMARY, Role.BACKUP):
        if facts.instance(r).instance_id == eip.instance_id:
            return r
    return None


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    service: str
    active: Role | None  # None: no attachments, or they disagree
    agree: bool  # every attachment points at the same single instance
    healthy: bool  # ... and it is running and reported healthy
    attachments: tuple[AttachmentState, ...]
    notes: tuple[str, ...]


def service_status(config: Config, service: str, facts: ServiceFacts) -> ServiceStatus:
    """Which instance carries the traffic, in a sentence per oddity."""
    states = attachment_states(config, service, facts)
    notes: list[str] = [
        f"{facts.instance(r).describe()}: {facts.instance(r).problem}"
        for r in (Role.PRIMARY, Role.BACKUP)
        if facts.instance(r).problem
    ]
    for s in states:
        label = f"{s.kind.replace('_', ' ')} {s.name}"
        if not s.points_to:
            notes.append(f"{label} points at neither instance ({s.detail})")
        elif len(s.points_to) == 2:
            notes.append(f"{label} has both instances ({s.detail}): a failover is half-done")
        elif not s.healthy:
            notes.append(f"{label} points at the {s.role}, which is not healthy ({s.detail})")
    roles = {s.role for s in states}
    active: Role | None = None
    agree = True
    if states:
        if len(roles) == 1 and None not in roles:
            active = roles.pop()
        else:
            agree = False
            named = sorted({str(r) for s in states for r in s.points_to})
            if len(named) > 1:
                notes.append(
                    "split: "
                    + "; ".join(
                        f"{s.kind.replace('_', ' ')} {s.name} -> "
                        + ("+".join(sorted(map(str, s.points_to))) or "none")
                        for s in states
                    )
                )
    else:
        running = [r for r in (Role.PRIMARY, Role.BACKUP) if facts.instance(r).running]
        notes.append("no attachments: AWS does not say which instance is active")
        if len(running) == 2:
            notes.append("both instances are running")
    if (
        not facts.primary.running
        and not facts.backup.running
        and facts.primary.state in STOPPED_STATES
        and facts.backup.state in STOPPED_STATES
    ):
        notes.append("both instances are stopped")
    healthy = agree and all(s.healthy for s in states)
    if active is not None and not facts.instance(active).running:
        healthy = False
        notes.append(f"the traffic points at the {active}, which is {facts.instance(active).state}")
    if not states:
        healthy = facts.primary.running or facts.backup.running
    return ServiceStatus(
        service, active, agree, healthy, tuple(states), tuple(dict.fromkeys(notes))
    )


# --------------------------------------------------------------------------- preflight


def preflight_problems(
    config: Config, service: str, facts: ServiceFacts, to_role: Role
) -> list[str]:
    """Why the plan must not start; empty when it may. Each sentence names
    the resource."""
    svc = config.services[service]
    att = svc.attachments
    problems: list[str] = []
    standby, old = facts.instance(to_role), facts.instance(to_role.other)
    for inst in (old, standby):
        if inst.problem:
            problems.append(f"{inst.describe()}: {inst.problem}")
        elif inst.state == MISSING:
            how = (
                f"id {inst.instance_id}"
                if inst.instance_id
                else f"tags Project={config.project_tag}, Service={service}, Role={inst.role}"
            )
            problems.append(f"the {inst.role} instance ({how}) does not exist")
    if standby.state in ("terminated", "shutting-down"):
        problems.append(f"{standby.describe()} is {standby.state}: nothing to fail over to")
    for _name, arn, _port in _unique_tgs(att.target_groups):
        tg = facts.target_group(arn)
        if tg is None or not tg.exists:
            problems.append(f"target group {arn} does not exist")
        elif tg.target_type not in ("instance", "ip"):
            problems.append(
                f"target group {arn} has target type {tg.target_type}: only instance and ip "
                "target groups can be moved"
            )
        elif tg.port is None:
            problems.append(f"target group {arn} has no port: set attachments.target_groups[].port")
    if att.elastic_ip:
        eip = facts.elastic_ip
        if eip is None or not eip.exists:
            problems.append(f"Elastic IP {att.elastic_ip} does not exist")
    for rec in att.route53:
        rf = facts.record(rec.zone_id, rec.name, rec.type)
        where = f"record {rec.name} {rec.type} in hosted zone {zone_key(rec.zone_id)}"
        if rf is None or not rf.exists:
            problems.append(f"{where} does not exist")
        elif rf.alias:
            problems.append(f"{where} is an alias record: jupiterd moves plain A/AAAA records")
        elif rf.routing_policy:
            problems.append(
                f"{where} has a routing policy (SetIdentifier): jupiterd moves simple records only"
            )
        elif (
            rec.address == "public"
            and facts.elastic_ip is None
            and standby.running
            and not (standby.public_ip)
        ):
            problems.append(f"{where} wants a public address, but {standby.describe()} has none")
    for rtb in dict.fromkeys(att.route_tables):
        rt = facts.route_table(rtb)
        if rt is None or not rt.exists:
            problems.append(f"route table {rtb} does not exist")
        elif not rt.has_default_route:
            problems.append(f"route table {rtb} has no 0.0.0.0/0 route to move")
    if att.route_tables and standby.state not in GONE_STATES and not standby.eni_id:
        problems.append(f"{standby.describe()} has no network interface for the NAT routes")
    return problems


def is_done(config: Config, service: str, facts: ServiceFacts, to_role: Role) -> bool:
    """The traffic is on ``to_role`` everywhere, nothing is left on the old
    instance, and it is stopped if the plan would stop it: nothing to do."""
    svc = config.services[service]
    standby, old = facts.instance(to_role), facts.instance(to_role.other)
    if not standby.running:
        return False
    states = attachment_states(config, service, facts)
    if not states:
        return old.state in STOPPED_STATES or not svc.stop_old
    if any(s.points_to != frozenset({to_role}) or not s.healthy for s in states):
        return False
    return not (svc.stop_old and old.state not in STOPPED_STATES | GONE_STATES)
