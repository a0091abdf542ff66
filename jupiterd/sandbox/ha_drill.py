"""The drills of replicated deciders (``jupiterd sandbox --replicas 3
--drill ha-...``), each checked at every replica's /status, in AWS (moto)
and in the AWS calls the replicas made (their fault proxies' counts):

- ha-cutoff: the leader is cut off from coturn: no failover; its hold is
  ``no_quorum`` and says "1 of 3";
- ha-dies: signaling's active really dies: exactly one failover, by the
  leader; the followers hold ``not_leader``;
- ha-kill: the leader is SIGKILLed mid-plan (after frp's first traffic
  step): another takes the lease after expiry and finishes the plan, each
  mutating call once; the takeover time is measured;
- ha-stop: the leader is SIGSTOPped mid-plan (coturn's) past its lease,
  another takes over and finishes; SIGCONTed, its fenced writes are
  refused (``plan_fenced``), nothing done twice;
- ha-dynamo: DynamoDB unreachable: signaling dies, no replica acts (every
  hold ``no_quorum``), probing goes on; DynamoDB back: one failover;
- ha-witness: every replica cut off from thingsboard, whose ELB witness
  (moto) sees its instance healthy: no failover, the hold says why.

A killed replica is restarted at the end of its drill, so ``ha-all`` runs
them one after the other on one sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import time
from typing import Any

from jupiterd.core.types import Role

from .drill import Phase, verify
from .ha_watch import (
    LEASE,
    PLAN_TIMEOUT,
    HaReport,
    active_state,
    call_checks,
    hold,
    leader,
    live_statuses,
    moved,
    no_call_check,
    plans,
    ready,
    render,
    restore,
    service_of,
    until,
)
from .replicas import WITNESS_SERVICE
from .stack import Stack

SERVICES = {
    "ha-cutoff": "coturn",
    "ha-dies": "signaling",
    "ha-kill": "frp",
    "ha-stop": "coturn",
    "ha-dynamo": "signaling",
    "ha-witness": WITNESS_SERVICE,
}
DRILLS = tuple(SERVICES)
WATCH = 8.0  # how long "nothing happens" is watched (> stale_after + lease)
TRAFFIC_STEPS = ("register_target", "associate_eip", "upsert_record")


async def _aws_end_state(stack: Stack, report: HaReport, service: str, frm: Role) -> None:
    """Where traffic is, in AWS and through the service's public attachment."""
    phase = Phase("failover" if frm is Role.PRIMARY else "failback", frm, frm.other, service)
    await verify(stack, service, phase)
    report.checks += [c for c in phase.checks if c.name != "plan succeeded"]


async def _see_down(stack: Stack, service: str, rids: list[str], timeout: float = 30) -> bool:
    async def cond() -> bool:
        sts = await live_statuses(stack.replicas)
        return all(active_state(sts.get(r), service) == "down" for r in rids)

    return await until(cond, timeout)


async def _holds(
    stack: Stack, service: str, seconds: float, seen: dict[str, list[tuple[str, str]]] | None = None
) -> dict[str, list[tuple[str, str]]]:
    """Every distinct hold each replica showed for ``service`` while
    watched (into ``seen`` as they come, if given); a hold whose reason
    differs only in how long it has lasted is the same hold."""
    seen = {} if seen is None else seen
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for rid, st in (await live_statuses(stack.replicas)).items():
            h = hold(st, service)
            mine = seen.setdefault(rid, [])
            if h is not None and _timeless(h) not in {_timeless(x) for x in mine}:
                mine.append(h)
        await asyncio.sleep(0.3)
    return seen


_DURATION = re.compile(r"\d+(?:\.\d+)?(?:ms|s|m|h)\b")


def _timeless(h: tuple[str, str]) -> tuple[str, str]:
    return h[0], _DURATION.sub("...", h[1])


def _say_holds(report: HaReport, seen: dict[str, list[tuple[str, str]]]) -> None:
    for rid, hs in seen.items():
        for guard, reason in hs:
            report.event(f"{rid} held ({guard}): {reason}")


async def ha_cutoff(stack: Stack, report: HaReport) -> None:
    rs, service = stack.replicas, report.service
    cut = leader(rs) or "r1"
    frm = stack.active_role(service)
    report.event(rs.cut(cut, service))
    down = await _see_down(stack, service, [cut])
    report.check(f"{cut} sees {service}'s {frm} down", down, "through its cut path")
    seen = await _holds(stack, service, WATCH)
    _say_holds(report, seen)
    want = f"1 of {rs.count}"
    mine = seen.get(cut, [])
    report.check(
        f"{cut} holds no_quorum, {want}",
        any(g == "no_quorum" and want in r for g, r in mine),
        "; ".join(f"{g}: {r}" for g, r in mine) or "no hold",
    )
    sts = await live_statuses(rs)
    others = {r: active_state(st, service) for r, st in sts.items() if r != cut}
    report.check("the others see it up", set(others.values()) == {"up"}, str(others))
    no_call_check(report, rs)
    report.check("no failover", stack.routes.get(service) is frm, f"traffic on the {frm}")
    report.event(rs.cut(cut, service, heal=True))

    async def healed() -> bool:
        st = (await live_statuses(rs)).get(cut)
        return active_state(st, service) == "up" and hold(st, service) is None

    report.check(f"{cut} sees it up again, no hold", await until(healed, 30), "after the heal")


async def _await_plan(stack: Stack, report: HaReport, since: float) -> list[tuple[str, Any]]:
    """Wait for a finished plan of the service at any replica; then watch a
    little longer for a second one."""

    async def found() -> bool:
        sts = await live_statuses(stack.replicas)
        return any(plans(st, report.service, since) for st in sts.values())

    if not await until(found, PLAN_TIMEOUT, 0.3):
        return []
    await asyncio.sleep(3.0)
    sts = await live_statuses(stack.replicas)
    return [(rid, p) for rid, st in sts.items() for p in plans(st, report.service, since)]


async def ha_dies(stack: Stack, report: HaReport) -> None:
    rs, service = stack.replicas, report.service
    lead, frm = leader(rs), stack.active_role(service)
    since = time.time()
    report.event(f"leader {lead}; break: {stack.break_service(service)}")
    seen: dict[str, list[tuple[str, str]]] = {}
    watcher = asyncio.create_task(_holds(stack, service, PLAN_TIMEOUT, seen))
    done = await _await_plan(stack, report, since)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    _say_holds(report, seen)
    for rid, p in done:
        report.event(f"{rid}: plan {p['result']} in {p['seconds']}s ({p['detail']})")
    report.check("exactly one failover", len(done) == 1, f"{len(done)} plan(s) finished")
    by = {rid for rid, _ in done}
    report.check(
        "by the leader", by == {lead}, f"run by {', '.join(by) or 'nobody'}; leader {lead}"
    )
    report.check(
        "it succeeded",
        bool(done) and done[0][1]["result"] == "success",
        f"{done[0][1]['result']}: {done[0][1]['detail']}" if done else "no plan",
    )
    await moved(stack, service, frm.other, 10)
    await _aws_end_state(stack, report, service, frm)
    followers = [r for r in rs.replicas if r != lead]
    report.check(
        "the followers hold not_leader",
        all(any(g == "not_leader" for g, _ in seen.get(r, [])) for r in followers),
        "; ".join(f"{r}: {[g for g, _ in seen.get(r, [])]}" for r in followers),
    )
    call_checks(report, rs, started=1)


async def _mid_plan(stack: Stack, report: HaReport, lead: str, steps: tuple[str, ...]) -> bool:
    """Wait until the leader's log says it finished one of ``steps``."""
    rs, offset = stack.replicas, stack.replicas.replicas[lead].log_size()

    async def cond() -> bool:
        for ev in rs.replicas[lead].events(offset):
            step = str(ev.get("step", ""))
            if ev.get("event") == "step_end" and step.startswith(steps) and ev.get("ok", True):
                report.event(f"{lead} finished step {step}")
                return True
        return False

    return await until(cond, PLAN_TIMEOUT, 0.05)


async def _takeover(stack: Stack, report: HaReport, old: str, t_gone: float) -> str | None:
    rs = stack.replicas

    async def cond() -> bool:
        return leader(rs) not in (None, old)

    if not await until(cond, LEASE * 4, 0.05):
        report.check("another replica takes the lease", False, f"still {leader(rs)}")
        return None
    new = leader(rs)
    took = round(time.monotonic() - t_gone, 3)
    report.figures["takeover_seconds"] = took
    report.event(f"{new} holds the lease, {took}s after")
    report.check(
        "another replica takes the lease",
        took < LEASE * 3,
        f"{new} after {took}s (lease {LEASE:g}s; target < lease + 1 s)",
    )
    return new


async def ha_kill(stack: Stack, report: HaReport) -> None:
    rs, service = stack.replicas, report.service
    lead, frm = leader(rs), stack.active_role(service)
    assert lead is not None
    report.event(f"leader {lead}; break: {stack.break_service(service)}")
    if not await _mid_plan(stack, report, lead, TRAFFIC_STEPS):
        report.check("the leader started the plan", False, "no traffic step in its log")
        return
    t_kill = time.monotonic()
    report.event(rs.replicas[lead].send(signal.SIGKILL))
    if await _takeover(stack, report, lead, t_kill) is None:
        return
    finished = await moved(stack, service, frm.other, PLAN_TIMEOUT)
    report.check("the new leader finishes the plan", finished, f"traffic on the {frm.other}")
    await asyncio.sleep(3.0)
    await _aws_end_state(stack, report, service, frm)
    call_checks(report, rs, started=1)
    report.event(await rs.act(lead, "restart"))


async def ha_stop(stack: Stack, report: HaReport) -> None:
    rs, service = stack.replicas, report.service
    lead, frm = leader(rs), stack.active_role(service)
    assert lead is not None
    report.event(f"leader {lead}; break: {stack.break_service(service)}")
    if not await _mid_plan(stack, report, lead, ("start_standby",)):
        report.check("the leader started the plan", False, "no start_standby in its log")
        return
    t_stop = time.monotonic()
    report.event(rs.replicas[lead].send(signal.SIGSTOP))
    new = await _takeover(stack, report, lead, t_stop)
    finished = new is not None and await moved(stack, service, frm.other, PLAN_TIMEOUT)
    report.check("the new leader finishes the plan", finished, f"traffic on the {frm.other}")
    offset = rs.replicas[lead].log_size()
    await asyncio.sleep(max(0.0, LEASE + 1 - (time.monotonic() - t_stop)))
    report.event(rs.replicas[lead].send(signal.SIGCONT))
    await asyncio.sleep(WATCH)
    fenced = [e for e in rs.replicas[lead].events(offset) if e.get("event") == "plan_fenced"]
    report.check(
        f"{lead}'s fenced writes refused (plan_fenced)",
        bool(fenced),
        str(fenced[0].get("detail") or fenced[0].get("reason") or fenced[0])
        if fenced
        else "no plan_fenced in its log",
    )
    report.check(f"{lead} no longer leads", leader(rs) != lead, f"leader {leader(rs)}")
    await _aws_end_state(stack, report, service, frm)
    call_checks(report, rs, started=1)


async def ha_dynamo(stack: Stack, report: HaReport) -> None:
    rs, service = stack.replicas, report.service
    frm = stack.active_role(service)
    report.event(rs.dynamodb(down=True))
    await asyncio.sleep(LEASE + 1)  # the leader's lease runs out
    report.event(f"break: {stack.break_service(service)}")
    ids = list((await live_statuses(rs)).keys())
    report.check("every replica sees it down", await _see_down(stack, service, ids), service)
    before = {r: (st or {}).get("services", {}) for r, st in (await live_statuses(rs)).items()}
    seen = await _holds(stack, service, WATCH)
    _say_holds(report, seen)
    after = await live_statuses(rs)
    held = {r: [g for g, _ in seen.get(r, [])] for r in ids}
    report.check(
        "every replica holds no_quorum", all("no_quorum" in g for g in held.values()), str(held)
    )
    probing = {
        r: service_of(after.get(r), service)["targets"][frm.value]["last_probe_at"]
        != before[r][service]["targets"][frm.value]["last_probe_at"]
        for r in ids
        if service_of(after.get(r), service) and before.get(r)
    }
    report.check(
        "monitoring goes on", bool(probing) and all(probing.values()), f"probed since: {probing}"
    )
    no_call_check(report, rs)
    rs.reset_counts()
    since = time.time()
    t_back = time.monotonic()
    report.event(rs.dynamodb(down=False))
    done = await _await_plan(stack, report, since)
    report.figures["acted_after_back_seconds"] = round(time.monotonic() - t_back, 3)
    for rid, p in done:
        report.event(f"{rid}: plan {p['result']} in {p['seconds']}s")
    report.check("acting resumes: one failover", len(done) == 1, f"{len(done)} plan(s)")
    await moved(stack, service, frm.other, 10)
    await _aws_end_state(stack, report, service, frm)
    call_checks(report, rs, started=1)


async def ha_witness(stack: Stack, report: HaReport) -> None:
    rs, service = stack.replicas, report.service
    frm = stack.active_role(service)
    report.event(rs.cut("all", service))
    ids = list((await live_statuses(rs)).keys())
    report.check("every replica sees it down", await _see_down(stack, service, ids), service)
    seen = await _holds(stack, service, WATCH)
    _say_holds(report, seen)
    lead = leader(rs)
    mine = seen.get(lead or "", [])
    report.check(
        "the leader holds no_quorum, naming the witness",
        any(g == "no_quorum" and ("witness" in r.lower() or "elb" in r.lower()) for g, r in mine),
        "; ".join(f"{g}: {r}" for g, r in mine) or f"no hold at {lead}",
    )
    no_call_check(report, rs)
    report.check("no failover", stack.routes.get(service) is frm, f"traffic on the {frm}")
    report.event(rs.cut("all", service, heal=True))


RUN = {
    "ha-cutoff": ha_cutoff,
    "ha-dies": ha_dies,
    "ha-kill": ha_kill,
    "ha-stop": ha_stop,
    "ha-dynamo": ha_dynamo,
    "ha-witness": ha_witness,
}


async def ha_drill(stack: Stack, name: str) -> dict[str, Any]:
    report = HaReport(name, SERVICES[name])
    if stack.active_role(report.service) is not Role.PRIMARY:  # an earlier drill of ha-all
        report.event(await restore(stack, report.service))
    ok, why = await ready(stack)
    if not ok:
        report.error = f"the replicas never became ready: {why}"
        return report.to_dict()
    stack.replicas.reset_counts()
    report.t0 = time.monotonic()
    try:
        await RUN[name](stack, report)
    finally:
        for rid, r in stack.replicas.replicas.items():  # leave no replica paused or dead
            if r.paused:
                report.event(r.send(signal.SIGCONT))
            if not r.alive:
                report.event(await stack.replicas.act(rid, "restart"))
    return report.to_dict()


async def run_drills(
    stack: Stack, args: argparse.Namespace, stop: asyncio.Event, console: Any
) -> int:
    names = list(DRILLS) if args.drill in ("ha-all", "all") else [args.drill]
    if names[0] not in DRILLS:
        console.say(
            f"no drill named {args.drill} with --replicas (have: {', '.join(DRILLS)}, ha-all)"
        )
        return 2
    reports = []
    for name in names:
        if stop.is_set():
            break
        console.say(f"drill {name}: {SERVICES[name]}")
        task = asyncio.create_task(ha_drill(stack, name))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            console.say("interrupted")
            return 130
        report = task.result()
        reports.append(report)
        if not args.json:
            console.report(render(report))
    if args.json:
        console.report(json.dumps(reports if len(names) > 1 else reports[0], indent=2))
    elif len(reports) > 1:
        console.report("== summary")
        for r in reports:
            console.report(f"  {r['drill']:11} {'PASSED' if r['ok'] else 'FAILED'}  {r['figures']}")
    return 0 if reports and all(r["ok"] for r in reports) else 1
