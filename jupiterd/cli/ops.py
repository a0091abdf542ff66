"""Operator commands: ``failover``, ``failback``, ``failover-all``,
``failback-all`` and ``status``.

The failover commands first finish any plan an earlier process left
unfinished (the journal), then run the plan of each named service (several
at once for the ``-all`` forms), printing progress lines on stderr and one
summary per service on stdout. ``--dry-run`` runs the describes and EC2's
permission checks and changes nothing. ``status`` reads AWS and says, per
service, which instance runs, where each attachment points, and whether
they agree; a split or half-done state is said plainly.

Exit codes: 0 success (or all agree and healthy), 1 failure, abort or
disagreement, 2 usage, 78 invalid configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from jupiterd.cli.common import EXIT_FAIL, EXIT_OK, UsageError, config_path

_OPS = (
    ("failover", "backup", False, "move SERVICE's traffic from the primary to the backup"),
    ("failback", "primary", False, "move SERVICE's traffic from the backup to the primary"),
    ("failover-all", "backup", True, "fail every service over to its backup"),
    ("failback-all", "primary", True, "fail every service back to its primary"),
)


def add_commands(sub: Any) -> None:
    for name, to_role, every, text in _OPS:
        p = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}.")
        if not every:
            p.add_argument("service", metavar="SERVICE")
        _common(p)
        p.add_argument(
            "--dry-run",
            action="store_true",
            default=argparse.SUPPRESS,
            help="log the AWS calls the plan would make, prove EC2 permissions, change nothing",
        )
        p.add_argument("--reason", help="recorded in the journal and the notification")
        p.set_defaults(func=_cmd_failover, to_role=to_role, every=every)
    p = sub.add_parser(
        "status",
        help="where each service's traffic is, according to AWS",
        description="Per service: which instance runs, where each attachment points, and "
        "whether they agree. Exit 0 if every service agrees and is healthy, 1 if not.",
    )
    _common(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("services", nargs="*", metavar="SERVICE", help="default: all")
    p.set_defaults(func=_cmd_status)


def _common(p: Any) -> None:
    # SUPPRESS keeps a `jupiterd --config F failover X` given before the
    # command from being overwritten by the subcommand's default.
    p.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="default: $JUPITERD_CONFIG or /etc/jupiterd/jupiterd.yaml",
    )


def _setup(args: argparse.Namespace, secrets: bool = True) -> Any:
    from jupiterd.config import load_config
    from jupiterd.telemetry import logs

    cfg = load_config(config_path(getattr(args, "config", None)), secrets=secrets)
    # Progress on stderr, the summary on stdout.
    logs.configure(cfg.log.level, "console", stream=sys.stderr)
    return cfg


def _who() -> str:
    return os.environ.get("SUDO_USER") or os.environ.get("USER") or "unknown user"


# --------------------------------------------------------------------------- failover


def _cmd_failover(args: argparse.Namespace) -> int:
    from jupiterd.core.types import Role

    cfg = _setup(args)
    to_role = Role(args.to_role)
    if args.every:
        services = list(cfg.services)
    else:
        if args.service not in cfg.services:
            known = ", ".join(cfg.services)
            raise UsageError(f"no service named '{args.service}' (configured: {known})")
        services = [args.service]
    dry_run = bool(getattr(args, "dry_run", False))
    reason = args.reason or f"manual {args.command} from the command line by {_who()}"
    from jupiterd.state.journal import held_services

    held = held_services(cfg.state_dir, services)
    for name, why in held.items():
        print(f"{name}: {args.command} refused: {why}")
    services = [s for s in services if s not in held]
    outcomes = asyncio.run(_failover(cfg, services, to_role, dry_run, reason)) if services else []
    ok = not held
    for outcome, resumed in outcomes:
        print(_format_outcome(outcome, resumed))
        ok = ok and outcome.result in ("success", "dry_run")
    return EXIT_OK if ok else EXIT_FAIL


async def _failover(
    cfg: Any, services: list[str], to_role: Any, dry_run: bool, reason: str
) -> list[tuple[Any, bool]]:
    from jupiterd.cli.executor import executor_for
    from jupiterd.core.execution import FailoverRequest

    async with executor_for(cfg, dry_run=dry_run, progress_interval=5.0) as ex:
        out: list[tuple[Any, bool]] = []
        resumed = await ex.resume_pending()
        out += [(o, True) for o in resumed]
        # A plan just resumed for a service stands for this request: running
        # it again would repeat what the resumption decided (e.g. a rollback).
        done = {o.service for o in resumed}
        todo = [s for s in services if s not in done]
        # Concurrently, but the members of a pool one after the other: each
        # plan then sees where the previous one left the shared standby.
        groups: dict[tuple[str, str], list[str]] = {}
        for s in todo:
            pool = cfg.services[s].pool
            groups.setdefault(("pool", pool) if pool else ("service", s), []).append(s)

        async def in_turn(names: list[str]) -> list[Any]:
            return [
                await ex.run(FailoverRequest(s, to_role.other, to_role, reason, "cli"))
                for s in names
            ]

        ran = await asyncio.gather(*(in_turn(g) for g in groups.values()))
        by_name = {o.service: o for group in ran for o in group}
        out += [(by_name[s], False) for s in todo]
        return out


def _format_outcome(o: Any, resumed: bool) -> str:
    from jupiterd.core.execution import direction_of

    direction = direction_of(o.to_role)
    head = "resumed interrupted " if resumed else ""
    lines = [f"{o.service}: {head}{direction} {o.result} in {o.seconds:.1f}s: {o.detail}"]
    width = max((len(s.name) for s in o.steps), default=0)
    for s in o.steps:
        mark = "ok  " if s.ok else "FAIL"
        lines.append(f"  {s.name:<{width}}  {mark} {s.seconds:7.2f}s  {s.detail}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- status


def _cmd_status(args: argparse.Namespace) -> int:
    cfg = _setup(args, secrets=False)  # status probes nothing: the secrets may be absent
    for s in args.services:
        if s not in cfg.services:
            raise UsageError(f"no service named '{s}' (configured: {', '.join(cfg.services)})")
    from jupiterd.aws.client import AwsError

    try:
        report = asyncio.run(_status(cfg, args.services or list(cfg.services)))
    except AwsError as exc:
        print(f"jupiterd status: cannot read AWS: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(_format_status(report))
    return EXIT_OK if report["ok"] else EXIT_FAIL


async def _status(cfg: Any, services: list[str]) -> dict[str, Any]:
    from jupiterd.aws.client import Aws
    from jupiterd.aws.inventory import AwsInventory
    from jupiterd.core.plan import pool_view, service_status
    from jupiterd.state import readiness
    from jupiterd.state.journal import Journal, JournalError, held_services

    # A pool is shown whole: the other members are read too.
    pools = list(dict.fromkeys(p for n in services if (p := cfg.services[n].pool)))
    wanted = list(dict.fromkeys([*services, *(m for p in pools for m in cfg.pool_members(p))]))
    aws = Aws(cfg.aws, cache_dir=Path(cfg.state_dir))
    try:
        facts = await AwsInventory(cfg, aws).facts(wanted)
        ha = await _ha_status(cfg, aws) if cfg.ha is not None else None
    finally:
        aws.close()
    try:
        # Read only: moving damage aside needs the plan lock, which the
        # daemon or a failover may hold; they move it when they next read.
        view = Journal(cfg.state_dir).check(repair=False)
    except JournalError:
        view = None
    pending = [p for p in view.plans if not p.done] if view is not None else []
    held = held_services(cfg.state_dir, services)
    drills = readiness.load(cfg.state_dir)
    out: dict[str, Any] = {}
    all_ok = True
    for name in services:
        f = facts[name]
        st = service_status(cfg, name, f)
        notes = list(st.notes)
        for p in pending:
            if p.service == name:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(p.started_at))
                notes.append(
                    f"an interrupted plan ({p.from_role} -> {p.to_role}, started {when} UTC) "
                    "is unfinished: `jupiterd failover/failback` or a daemon start resumes it"
                )
        if name in held:
            notes.append(held[name])
        damage = None
        if view is not None and (view.affected is None or name in view.affected):
            damage = view.damage
        if damage:
            notes.append(f"{damage}: the next failover or daemon start holds this service")
        damaged = damage is not None or name in held
        ok = st.agree and st.healthy and not damaged and not any(p.service == name for p in pending)
        all_ok = all_ok and ok
        out[name] = {
            "active": str(st.active) if st.active else None,
            "agree": st.agree,
            "healthy": st.healthy,
            "ok": ok,
            "instances": {
                str(r): {
                    "instance_id": f.instance(r).instance_id,
                    "state": f.instance(r).state,
                    "private_ip": f.instance(r).private_ip,
                    "public_ip": f.instance(r).public_ip,
                    "address": f.instance(r).address,
                    "maintenance": f.instance(r).maintenance,
                }
                for r in (f.primary.role, f.backup.role)
            },
            "attachments": [
                {
                    "kind": a.kind,
                    "name": a.name,
                    "points_to": sorted(str(r) for r in a.points_to),
                    "healthy": a.healthy,
                    "detail": a.detail,
                }
                for a in st.attachments
            ],
            "notes": notes,
            "standby": _standby(drills.get(name)),
        }
        if f.in_use:
            out[name]["shared"] = {i: list(u) for i, u in f.in_use.items()}
    report: dict[str, Any] = {"ok": all_ok, "services": out}
    if ha is not None:
        report["ha"] = ha
    if pools:
        report["pools"] = {}
        for pool in pools:
            pv = pool_view(cfg, pool, facts)
            report["pools"][pool] = {
                "standby": {
                    "instance_id": pv.standby_id,
                    "state": pv.standby_state,
                    "serves": list(pv.standby_serves),
                    "summary": pv.summary(),
                },
                "members": {
                    m.name: {
                        "instance_id": m.instance_id,
                        "served_by": str(m.served_by) if m.served_by else None,
                    }
                    for m in pv.members
                },
            }
    return report


async def _ha_status(cfg: Any, aws: Any) -> dict[str, Any]:
    """Who holds the replicated deciders' lease, as the table says."""
    from jupiterd.aws.client import AwsError
    from jupiterd.aws.lease import Lease
    from jupiterd.telemetry.clock import SystemClock

    lease = Lease(aws, cfg.ha.table, cfg.ha.replica_id, SystemClock())
    try:
        rec = await lease.read()
    except AwsError as exc:
        return {"table": cfg.ha.table, "leader": None, "error": exc.sentence()}
    return {
        "table": cfg.ha.table,
        "leader": rec.owner if rec is not None else None,
        "token": rec.token if rec is not None else None,
        "expires_at": rec.expires_at if rec is not None and rec.owner else None,
        "error": None,
    }


def _leader_line(ha: dict[str, Any]) -> str:
    if ha["error"]:
        return f"leader: unknown (table {ha['table']}: {ha['error']})"
    if not ha["leader"]:
        return f"leader: none (table {ha['table']})"
    until = time.strftime("%H:%M:%S", time.gmtime(ha["expires_at"] or 0))
    return f"leader: {ha['leader']} (token {ha['token']}, lease until {until} UTC)"


def _standby(d: dict[str, Any] | None) -> dict[str, Any]:
    """The standby's last readiness drill, as `status` shows it."""
    d = d or {}
    return {
        "verified_at": d.get("verified_at"),
        "rto_budget_seconds": d.get("verified_rto_seconds"),
        "last_result": d.get("result"),
        "last_drill_at": d.get("at"),
    }


def _format_status(report: dict[str, Any]) -> str:
    lines: list[str] = []
    if "ha" in report:
        lines.append(_leader_line(report["ha"]))
    for name, s in report["services"].items():
        if s["active"] and s["agree"]:
            state = f"on the {s['active']}, attachments agree"
            state += ", healthy" if s["healthy"] else ", NOT HEALTHY"
        elif not s["attachments"]:
            state = "no attachments" + (", healthy" if s["healthy"] else ", NOT HEALTHY")
        else:
            state = "SPLIT: the attachments do not agree"
        lines.append(f"{name}: {state}")
        for role, i in s["instances"].items():
            addr = i["address"] or "-"
            maint = "  (maintenance)" if i["maintenance"] else ""
            lines.append(
                f"  {role:<8} {i['instance_id'] or '(not found)':<20} {i['state']:<9} {addr}{maint}"
            )
        for a in s["attachments"]:
            to = "+".join(a["points_to"]) or "nothing"
            lines.append(f"  {a['kind'].replace('_', ' ')} {a['name']} -> {to} ({a['detail']})")
        sb = s.get("standby") or {}
        if sb.get("verified_at") is not None:
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(sb["verified_at"]))
            rto = sb.get("rto_budget_seconds")
            budget = f", RTO budget {rto:.1f}s (boot + app healthy)" if rto is not None else ""
            lines.append(f"  standby verified {when} UTC{budget}; last drill {sb['last_result']}")
        elif sb.get("last_result"):
            lines.append(f"  standby never verified; last drill {sb['last_result']}")
        for n in s["notes"]:
            lines.append(f"  ! {n}")
    for pool, p in report.get("pools", {}).items():
        sb = p["standby"]
        lines.append(
            f"pool {pool}: standby {sb['instance_id'] or '(not found)'} ({sb['state']}) "
            f"{sb['summary']}"
        )
        for m, v in p["members"].items():
            by = {"primary": "its own instance", "backup": "the standby"}.get(
                v["served_by"] or "", "no single instance (split or not found)"
            )
            lines.append(f"  {m:<12} served by {by}")
    return "\n".join(lines)
