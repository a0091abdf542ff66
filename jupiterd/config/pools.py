"""Pools (a shared standby, N+1): each member expanded into an ordinary
service, and the layouts jupiterd cannot serve safely refused, naming the key."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from jupiterd.config.errors import ConfigError
from jupiterd.config.schema import (
    Attachments,
    Config,
    InstanceRef,
    PoolConfig,
    PoolMember,
    ServiceConfig,
)
from jupiterd.config.standby import StandbyFields
from probes.options import quote


def expand_pools(cfg: Config, doc: Mapping[str, Any]) -> Config:
    """``cfg`` with every pool member added to ``services`` (primary: the
    member, backup: the pool's standby), after the checks. ``doc`` is the
    parsed file: a service's ``pool`` is settable only through ``pools``."""
    raw_services = doc.get("services")
    if "services" not in doc and "pools" not in doc:
        raise ConfigError(None, "services", "required key is missing")
    if isinstance(raw_services, Mapping):
        for name, svc in raw_services.items():
            if isinstance(svc, Mapping) and "pool" in svc:
                raise ConfigError(
                    None,
                    f"services.{name}.pool",
                    "set only by `pools:` (list the service as a member of a pool)",
                )
    if not cfg.services and not cfg.pools:
        raise ConfigError(None, "services", "at least one service is required")
    services = dict(cfg.services)
    pools = dict(cfg.pools)
    for pname, pool in cfg.pools.items():
        base = f"pools.{pname}"
        pool = pools[pname] = pool.model_copy(update={"plan": _plan(base, pool)})
        if len(pool.members) < 2:
            raise ConfigError(
                None,
                f"{base}.members",
                f"a pool needs at least 2 members ({len(pool.members)} given): "
                "a single one is an ordinary service",
            )
        if not pool.standby.instance_id:
            raise ConfigError(
                None,
                f"{base}.standby.instance_id",
                "a pool's standby needs its instance_id (it is shared: tags name one service)",
            )
        for mname, member in pool.members.items():
            if mname in services:
                owner = services[mname].pool
                where = f"a member of pool {quote(owner)}" if owner else "a service"
                raise ConfigError(
                    None, f"{base}.members.{mname}", f"{where} of that name already exists"
                )
            services[mname] = ServiceConfig(
                probe=pool.probe,
                primary=InstanceRef(instance_id=member.instance_id, address=member.address),
                backup=pool.standby,
                attachments=member.attachments,
                thresholds=pool.thresholds,
                auto_failover=pool.auto_failover,
                stop_old=pool.stop_old,
                sns_topic_arn=pool.sns_topic_arn,
                witness=pool.witness,
                pool=pname,
                **{f: getattr(pool, f) for f in StandbyFields.model_fields},
            )
        _check_overlap(base, pool.members)
    out = cfg.model_copy(update={"services": services, "pools": pools})
    _check_instances(out)
    return out


PEER_THEN_STANDBY = "peer_then_standby"


def _plan(base: str, pool: PoolConfig) -> str:
    """The pool's failover plan: peer_then_standby by default for NAT
    instances (icmp probes, route tables only), standby_only otherwise."""
    why = None
    if pool.probe.kind != "icmp":
        why = f"its probe is {pool.probe.kind}, not icmp"
    for mname, member in pool.members.items():
        att = member.attachments
        if why is None and not att.route_tables:
            why = f"member {mname} has no route_tables"
        elif why is None and (att.target_groups or att.elastic_ip or att.route53):
            why = f"member {mname} has attachments other than route_tables"
    if pool.plan is None:
        return "standby_only" if why else PEER_THEN_STANDBY
    if pool.plan == PEER_THEN_STANDBY and why:
        raise ConfigError(
            None,
            f"{base}.plan",
            f"peer_then_standby routes a member's route tables through another NAT "
            f"instance, for pools of icmp-probed members with route_tables only; {why}",
        )
    return pool.plan


def _key(cfg: Config, service: str, role: str) -> str:
    """The key the file gives the instance at."""
    pool = cfg.services[service].pool
    if pool is None:
        return f"services.{service}.{role}.instance_id"
    if role == "backup":
        return f"pools.{pool}.standby.instance_id"
    return f"pools.{pool}.members.{service}.instance_id"


def _check_instances(cfg: Config) -> None:
    """An instance is the primary of one service at most; a backup is shared
    only as a pool's standby, and is nobody's primary."""
    primaries: dict[str, str] = {}
    for name, svc in cfg.services.items():
        iid = svc.primary.instance_id
        if iid is None:
            continue
        if iid in primaries:
            raise ConfigError(
                None,
                _key(cfg, name, "primary"),
                f"{iid} is already the primary of {primaries[iid]}: "
                "an instance is the primary of one service only",
            )
        primaries[iid] = name
    backups: dict[str, str] = {}
    for name, svc in cfg.services.items():
        iid = svc.backup.instance_id
        if iid is None:
            continue
        if iid in primaries:
            raise ConfigError(
                None,
                _key(cfg, name, "backup"),
                f"{iid} is also the primary of {primaries[iid]}: a standby must be "
                "stopped or idle, never another service's active instance",
            )
        first = backups.setdefault(iid, name)
        if first != name and (svc.pool is None or cfg.services[first].pool != svc.pool):
            raise ConfigError(
                None,
                _key(cfg, name, "backup"),
                f"{iid} is also the backup of {first}: a standby shared by several "
                "services must be declared once, as a pool's standby (pools:)",
            )


def _attachment_keys(att: Attachments) -> Iterator[tuple[str, str]]:
    for tg in att.target_groups:
        yield "target_groups", tg.arn
    if att.elastic_ip:
        yield "elastic_ip", att.elastic_ip
    for rec in att.route53:
        name = rec.name.replace("\\052", "*").rstrip(".").lower()
        yield "route53", f"{name} {rec.type} in {rec.zone_id.rsplit('/', 1)[-1]}"
    for rtb in att.route_tables:
        yield "route_tables", rtb


def _check_overlap(base: str, members: Mapping[str, PoolMember]) -> None:
    """Two members moving the same attachment would take it from each other."""
    owner: dict[tuple[str, str], str] = {}
    for mname, member in members.items():
        for kind, ident in dict.fromkeys(_attachment_keys(member.attachments)):
            first = owner.setdefault((kind, ident), mname)
            if first != mname:
                raise ConfigError(
                    None,
                    f"{base}.members.{mname}.attachments.{kind}",
                    f"{ident} is also an attachment of {first}: "
                    "the members of a pool must not share attachments",
                )
