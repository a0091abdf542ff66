"""``jupiterd discover``'s pure half: account facts in, decisions out.

``jupiterd.aws.discover`` reads the account into plain ``Facts`` (``discover_facts``);
``decide`` turns them into services and pools, each with its probe, its
instances and its attachments, and a list of what it could not decide
(``Discovery.notes``). ``jupiterd.core.discover_yaml.render`` writes that
as a commented configuration. Nothing here does I/O.

How a group of instances (one ``Service`` tag) becomes configuration:

- one ``Role=primary`` and one ``Role=backup``: an ordinary service;
- several primaries and exactly one backup: a pool (members share the
  standby), each member named ``<service>-<az letter>``;
- anything else (no backup, no primary, several of each, another role):
  left out, and said why.

The probe kind: a ``jupiterd:probe`` tag on an instance wins; else a
primary with its source/dest check off (a NAT) is probed with icmp; else
the instance ports of its target groups, then its security groups' ingress
ports: 3000 socketio, 3478 turn, 7000 frp, 8080 thingsboard. No known
port, or several kinds, is undecided: a ``tcp`` (one port seen) or
``icmp`` probe is written with a TODO, and the note says so.
"""

from __future__ import annotations

from collections.abc import Mapping

import probes
from jupiterd.core.discover_facts import (  # re-exported: discover's vocabulary
    Attached,
    Discovery,
    ElasticIp,
    Facts,
    Instance,
    Member,
    Note,
    Pool,
    PortRange,
    Probe,
    Record,
    RouteTable,
    Service,
    TargetGroup,
)

__all__ = [
    "KIND_BY_PORT",
    "PROBE_TAG",
    "SECRETS",
    "TB_USER",
    "Attached",
    "Discovery",
    "ElasticIp",
    "Facts",
    "Instance",
    "Member",
    "Note",
    "Pool",
    "PortRange",
    "Probe",
    "Record",
    "RouteTable",
    "Service",
    "TargetGroup",
    "decide",
]

KIND_BY_PORT: Mapping[int, str] = {3000: "socketio", 3478: "turn", 7000: "frp", 8080: "thingsboard"}
PROBE_TAG = "jupiterd:probe"
ACTIVE_ROLES = frozenset({"primary"})
STANDBY_ROLES = frozenset({"backup"})
# Security-group port ranges wider than this say nothing about the service.
_MAX_RANGE = 100
# The secret options each kind needs: (option, environment variable, what it is).
SECRETS: Mapping[str, tuple[tuple[str, str, str], ...]] = {
    "turn": (("secret", "JUPITERD_TURN_SECRET", "coturn's static-auth-secret"),),
    "frp": (("token", "JUPITERD_FRP_TOKEN", "frps's auth token"),),
    "thingsboard": (("password", "JUPITERD_TB_PASSWORD", "the probe user's password"),),
}
TB_USER = "TODO-probe-user@example.invalid"


def decide(facts: Facts) -> Discovery:
    notes: list[Note] = [Note("aws", text) for text in facts.unread]
    groups: dict[str, list[Instance]] = {}
    for inst in facts.instances:
        if not inst.service:
            notes.append(
                Note(
                    inst.instance_id,
                    f"tagged Project={facts.project} but has no Service tag: left out",
                )
            )
            continue
        groups.setdefault(inst.service, []).append(inst)
    services: list[Service] = []
    pools: list[Pool] = []
    for name in sorted(groups):
        group = sorted(groups[name], key=lambda i: (i.az, i.instance_id))
        odd = [i for i in group if (i.role or "") not in ACTIVE_ROLES | STANDBY_ROLES]
        for i in odd:
            notes.append(
                Note(
                    name,
                    f"{i.instance_id} has Role={i.role or '(none)'}, not primary or "
                    "backup: left out",
                )
            )
        active = [i for i in group if i.role in ACTIVE_ROLES]
        standby = [i for i in group if i.role in STANDBY_ROLES]
        if len(active) == 1 and len(standby) == 1:
            services.append(_service(facts, name, active[0], standby[0], notes))
        elif len(active) > 1 and len(standby) == 1:
            pools.append(_pool(facts, name, active, standby[0], notes))
        else:
            notes.append(
                Note(
                    name,
                    f"{len(active)} primary and {len(standby)} backup instance(s): only one "
                    "primary and one backup (a service) or several primaries sharing one "
                    "backup (a pool) can be configured; left out",
                )
            )
    topic = _topic(facts, notes)
    return Discovery(
        facts.project,
        facts.region,
        facts.endpoint_url,
        topic,
        tuple(services),
        tuple(pools),
        tuple(notes),
    )


def _service(
    facts: Facts, name: str, primary: Instance, backup: Instance, notes: list[Note]
) -> Service:
    att = _attachments(facts, name, (primary, backup), notes)
    if primary.state != "running" and backup.state == "running":
        notes.append(
            Note(name, "the backup runs and the primary does not: the service looks failed over")
        )
    if not att:
        notes.append(Note(name, "no attachment found: a failover would move no traffic"))
    probe = _probe(facts, name, (primary, backup), att, notes)
    _secret_notes(name, probe, notes)
    return Service(name, probe, primary, backup, att)


def _pool(
    facts: Facts, name: str, active: list[Instance], standby: Instance, notes: list[Note]
) -> Pool:
    members: list[Member] = []
    used: set[str] = set()
    for n, inst in enumerate(active, start=1):
        letter = inst.az[-1:] if inst.az[-1:].isalpha() else ""
        member = f"{name}-{letter}" if letter else f"{name}-{n}"
        if member in used:
            member = f"{name}-{n}"
        used.add(member)
        att = _attachments(facts, member, (inst,), notes)
        if not att:
            notes.append(Note(member, "no attachment found: a failover would move no traffic"))
        members.append(Member(member, inst, att))
    held = _attachments(facts, name, (standby,), [])
    if held:
        notes.append(
            Note(
                name,
                f"attachments point at the standby {standby.instance_id} now: which member's "
                "they are cannot be told; assign them by hand",
            )
        )
    merged = Attached(
        target_groups=tuple(t for m in members for t in m.attachments.target_groups),
        route_tables=tuple(r for m in members for r in m.attachments.route_tables),
    )
    probe = _probe(facts, name, (*active, standby), merged, notes)
    _secret_notes(name, probe, notes)
    return Pool(name, probe, tuple(members), standby)


def _attachments(
    facts: Facts, where: str, instances: tuple[Instance, ...], notes: list[Note]
) -> Attached:
    ids = {i.instance_id for i in instances}
    enis = {e for i in instances for e in i.enis}
    tgs: list[tuple[str, int | None]] = []
    for tg in facts.target_groups:
        ports = {port for iid, port in tg.targets if iid in ids}
        if not ports:
            continue
        if len(ports) > 1:
            notes.append(
                Note(
                    where,
                    f"registered in {tg.name} on several ports {sorted(ports, key=str)}: "
                    "the first is used",
                )
            )
        port = sorted(ports, key=lambda p: p or 0)[0]
        tgs.append((tg.arn, port if port not in (None, tg.port) else None))
    eips = [e for e in facts.elastic_ips if e.instance_id in ids]
    eip = eips[0].allocation_id if len(eips) == 1 else None
    if len(eips) > 1:
        notes.append(
            Note(
                where,
                "several Elastic IPs ("
                + ", ".join(e.allocation_id for e in eips)
                + "): one can be configured; choose it (elastic_ip)",
            )
        )
    private = {i.private_ip for i in instances if i.private_ip}
    public = {i.public_ip for i in instances if i.public_ip}
    public |= {e.public_ip for e in eips}
    records: list[tuple[str, str, str, str]] = []
    for rec in facts.records:
        hits = [v for v in rec.values if v in private or v in public]
        if not hits or rec.type not in ("A", "AAAA"):
            continue
        if rec.set_identifier is not None or len(rec.values) > 1:
            notes.append(
                Note(
                    where,
                    f"Route 53 record {rec.name} ({rec.type}) names this instance among "
                    "other values or a routing policy: left out, only a single-value "
                    "record can move",
                )
            )
            continue
        kind = "private" if hits[0] in private else "public"
        records.append((rec.zone_id, rec.name.rstrip("."), rec.type, kind))
    tables = [
        rt.route_table_id
        for rt in facts.route_tables
        if (rt.default_eni and rt.default_eni in enis)
        or (rt.default_instance and rt.default_instance in ids)
    ]
    return Attached(tuple(tgs), eip, tuple(records), tuple(sorted(tables)))


def _probe(
    facts: Facts,
    where: str,
    instances: tuple[Instance, ...],
    att: Attached,
    notes: list[Note],
) -> Probe:
    tagged = sorted({i.probe_tag for i in instances if i.probe_tag})
    if len(tagged) == 1:
        try:
            probes.get_kind(tagged[0])
        except Exception:  # an OptionError: not a kind jupiterd knows
            notes.append(Note(where, f"tag {PROBE_TAG}={tagged[0]} names no probe kind: ignored"))
        else:
            return Probe(tagged[0], None, f"tag {PROBE_TAG}", True)
    elif len(tagged) > 1:
        notes.append(Note(where, f"its instances' {PROBE_TAG} tags disagree ({', '.join(tagged)})"))
    if att.route_tables or any(not i.source_dest_check for i in instances if i.role == "primary"):
        return Probe("icmp", None, "a NAT: source/dest check off, default routes through it", True)
    ids = {i.instance_id for i in instances}
    tg_ports = sorted(
        {
            p
            for tg in facts.target_groups
            for iid, port in tg.targets
            if iid in ids
            for p in (port or tg.port,)
            if p is not None
        }
    )
    sg_ports = sorted(
        {
            p
            for i in instances
            for sg in i.security_groups
            for r in facts.security_groups.get(sg, ())
            if r.protocol != "-1" and r.to_port - r.from_port <= _MAX_RANGE
            for p in range(r.from_port, r.to_port + 1)
        }
    )
    for source, ports in (("target group port", tg_ports), ("security group port", sg_ports)):
        kinds = sorted({KIND_BY_PORT[p] for p in ports if p in KIND_BY_PORT})
        if len(kinds) == 1:
            port = next(p for p in ports if KIND_BY_PORT.get(p) == kinds[0])
            return Probe(kinds[0], port, f"{source} {port}", True)
        if len(kinds) > 1:
            notes.append(
                Note(
                    where,
                    f"probe kind undecided: {source}s {ports} fit {', '.join(kinds)}; choose one",
                )
            )
            port = next(p for p in ports if p in KIND_BY_PORT)
            return Probe("tcp", port, f"{source}s fit {', '.join(kinds)}", False)
    seen = [p for p in (tg_ports or sg_ports) if p != 22]
    if len(seen) == 1:
        notes.append(
            Note(
                where,
                f"probe kind undecided: port {seen[0]} is none jupiterd knows; a tcp "
                "connect is written, choose an application probe",
            )
        )
        return Probe("tcp", seen[0], f"port {seen[0]}, no known service", False)
    notes.append(
        Note(
            where,
            "probe kind undecided: no known port in its target or security groups"
            + (f" (ports {seen})" if seen else "")
            + "; an icmp probe is written, choose an application probe",
        )
    )
    return Probe("icmp", None, "no known port", False)


def _secret_notes(where: str, probe: Probe, notes: list[Note]) -> None:
    for option, env, what in SECRETS.get(probe.kind, ()):
        notes.append(Note(where, f"TODO: set {env} ({what}) for probe option {option!r}"))
    if probe.kind == "thingsboard":
        notes.append(Note(where, f"TODO: the probe user's name is a placeholder ({TB_USER})"))


def _topic(facts: Facts, notes: list[Note]) -> str | None:
    want = facts.project.lower()
    hits = sorted(t for t in facts.topics if want in t.rsplit(":", 1)[-1].lower())
    if len(hits) == 1:
        return hits[0]
    if hits:
        notes.append(
            Note(
                "sns_topic_arn",
                "several topics name the project (" + ", ".join(hits) + "): choose one",
            )
        )
    else:
        notes.append(
            Note(
                "sns_topic_arn",
                f"no SNS topic whose name contains {facts.project!r}: "
                "failover summaries are not published until one is set",
            )
        )
    return None
