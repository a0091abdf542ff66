"""Shared instances (a pool's standby): which other services' attachments
point at an instance, and what a pool looks like as a whole."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from jupiterd.config import Config
from jupiterd.core.plan.facts import ArnContext, ServiceFacts
from jupiterd.core.plan.model import Permission, Stage, Step, StepKind
from jupiterd.core.plan.status import service_status
from jupiterd.core.types import Role

PEER_THEN_STANDBY = "peer_then_standby"


def sharing_services(config: Config, service: str) -> tuple[str, ...]:
    """The other services that name one of ``service``'s instances (the
    other members of its pool, as the configuration allows no other
    sharing)."""
    svc = config.services[service]
    ids = {i for i in (svc.primary.instance_id, svc.backup.instance_id) if i}
    out = []
    for name, other in config.services.items():
        if name == service:
            continue
        if ids & {other.primary.instance_id, other.backup.instance_id}:
            out.append(name)
    return tuple(out)


def attachment_users(
    config: Config, facts: Mapping[str, ServiceFacts], service: str
) -> dict[str, tuple[str, ...]]:
    """Instance id (one of ``service``'s) -> the attachments of the other
    services that point at it, one phrase each ("nat-b's route table rtb-..."). Only services that
    share an instance with ``service`` are looked at; those absent from
    ``facts`` are skipped."""
    svc = config.services[service]
    mine = {i for i in (svc.primary.instance_id, svc.backup.instance_id) if i}
    own = facts.get(service)
    if own is not None:
        mine |= {i for i in (own.primary.instance_id, own.backup.instance_id) if i}
    out: dict[str, list[str]] = {}
    for other in sharing_services(config, service):
        f = facts.get(other)
        if f is None:
            continue
        for a in service_status(config, other, f).attachments:
            for role in sorted(a.points_to):
                iid = f.instance(role).instance_id
                if iid in mine:
                    out.setdefault(iid, []).append(f"{other}'s {a.kind.replace('_', ' ')} {a.name}")
    return {k: tuple(v) for k, v in out.items()}


@dataclass(frozen=True, slots=True)
class MemberView:
    name: str
    instance_id: str | None  # the member's own (primary) instance
    served_by: Role | None  # PRIMARY, BACKUP (the standby), None: split or unknown


@dataclass(frozen=True, slots=True)
class PoolView:
    pool: str
    standby_id: str | None
    standby_state: str
    members: tuple[MemberView, ...]

    @property
    def standby_serves(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members if m.served_by is Role.BACKUP)

    def summary(self) -> str:
        """ "serves none", "serves nat-a", "serves all (nat-a, nat-b)"."""
        serves = self.standby_serves
        if not serves:
            return "serves none"
        if len(serves) == len(self.members):
            return f"serves all ({', '.join(serves)})"
        return f"serves {', '.join(serves)}"


def pool_view(config: Config, pool: str, facts: Mapping[str, ServiceFacts]) -> PoolView:
    """The pool as AWS says it is; members absent from ``facts`` are shown
    as unknown. Never raises for a combination of attachments."""
    members = []
    standby_id: str | None = None
    standby_state = "unknown"
    for name in config.pool_members(pool):
        svc = config.services[name]
        standby_id = standby_id or svc.backup.instance_id
        f = facts.get(name)
        if f is None:
            members.append(MemberView(name, svc.primary.instance_id, None))
            continue
        standby_id = f.backup.instance_id or standby_id
        standby_state = f.backup.state
        st = service_status(config, name, f)
        members.append(MemberView(name, f.primary.instance_id, st.active))
    return PoolView(pool, standby_id, standby_state, tuple(members))


def fallback_steps(
    config: Config, service: str, to_role: Role, facts: ServiceFacts, arns: ArnContext
) -> tuple[tuple[Step, ...], tuple[str, ...]]:
    """A peer_then_standby member's failover begins by pointing each of its
    route tables' default route at ``facts.fallback`` (one ReplaceRoute per
    table, before the standby starts): outbound traffic is back in about a
    second, across AZs until the standby takes over. The steps, and the
    note saying why there are none when the fallback was refused."""
    att = config.services[service].attachments
    fb = facts.fallback
    if to_role is not Role.BACKUP or config.pool_plan(service) != PEER_THEN_STANDBY:
        return (), ()
    if fb is None or not att.route_tables:
        return (), ()
    if fb.instance_id is None or not fb.eni_id:
        return (), (f"no reroute through another NAT first: {fb.reason}; standby only",)
    steps = tuple(
        Step(
            f"reroute_peer:{rtb}",
            StepKind.REROUTE_PEER,
            Stage.FALLBACK,
            to_role,
            rtb,
            {
                "route_table_id": rtb,
                "destination": "0.0.0.0/0",
                "instance_id": fb.instance_id,
                "eni_id": fb.eni_id,
                "via": fb.via,
            },
            (Permission("ec2:ReplaceRoute", (arns.ec2("route-table", rtb),)),),
        )
        for rtb in dict.fromkeys(att.route_tables)
    )
    return steps, ()
