"""What AWS says of a service: where each traffic attachment points, and
which instance carries the traffic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from jupiterd.config import Config
from jupiterd.core.plan.facts import (
    EipFacts,
    InstanceFacts,
    ServiceFacts,
    TargetGroupFacts,
    _unique_tgs,
    normalize_record_name,
    target_group_name,
)
from jupiterd.core.types import STOPPED_STATES, Role

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
