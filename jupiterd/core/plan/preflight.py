"""Why a plan must not start (preflight), and whether it has nothing left
to do."""

from __future__ import annotations

from jupiterd.config import Config
from jupiterd.core.plan.facts import (
    GONE_STATES,
    MISSING,
    ServiceFacts,
    _unique_tgs,
    zone_key,
)
from jupiterd.core.plan.status import attachment_states
from jupiterd.core.types import STOPPED_STATES, TERMINATED_STATES, Role

# --------------------------------------------------------------------------- preflight


def preflight_problems(
    config: Config,
    service: str,
    facts: ServiceFacts,
    to_role: Role,
    *,
    missing_zones: frozenset[str] = frozenset(),
    no_public_at_start: str | None = None,
) -> list[str]:
    """Why the plan must not start; empty when it may. Each sentence names
    the resource. ``missing_zones``: the hosted zones Route 53 does not
    know; ``no_public_at_start``: why the stopped standby will get no public
    address when it starts (the executor reads both)."""
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
    if standby.state in TERMINATED_STATES:
        problems.append(f"{standby.describe()} is {standby.state}: nothing to fail over to")
    busy = facts.in_use.get(standby.instance_id or "", ())
    # A NAT pool's plan reroutes through the standby as it already forwards.
    if busy and svc.pool is not None and config.pool_plan(service) != "peer_then_standby":
        problems.append(
            f"{standby.describe()} is the shared standby of pool {svc.pool} and already "
            f"serves another member ({', '.join(busy)}): one standby per pool; "
            "fail that member back first"
        )
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
    for zone in dict.fromkeys(zone_key(r.zone_id) for r in att.route53):
        if zone in missing_zones:
            names = ", ".join(r.name for r in att.route53 if zone_key(r.zone_id) == zone)
            problems.append(f"hosted zone {zone} (of {names}) does not exist")
    for rec in att.route53:
        rf = facts.record(rec.zone_id, rec.name, rec.type)
        where = f"record {rec.name} {rec.type} in hosted zone {zone_key(rec.zone_id)}"
        if zone_key(rec.zone_id) in missing_zones:
            continue  # said once for the zone
        if rf is None or not rf.exists:
            problems.append(f"{where} does not exist")
        elif rf.alias:
            problems.append(f"{where} is an alias record: jupiterd moves plain A/AAAA records")
        elif rf.routing_policy:
            problems.append(
                f"{where} has a routing policy (SetIdentifier): jupiterd moves simple records only"
            )
        elif rec.address == "public" and facts.elastic_ip is None and not standby.public_ip:
            # A running instance keeps what it has; a stopped one gets a
            # public address at its start if its network interface asks.
            if standby.running:
                problems.append(
                    f"{where} wants a public address, but {standby.describe()} has none"
                )
            elif no_public_at_start:
                problems.append(
                    f"{where} wants a public address, but {standby.describe()} gets none "
                    f"when it starts ({no_public_at_start}) and no Elastic IP moves to it"
                )
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
