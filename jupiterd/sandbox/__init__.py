"""`jupiterd sandbox`: the Jupiter stack on one machine, and live drills.

    jupiterd sandbox                          run until Ctrl-C; break and heal services
    jupiterd sandbox --drill SERVICE|all      break, fail over, verify; exit 0 if all passed
    jupiterd sandbox --drill SERVICE --failback   ... then heal and fail back
    jupiterd sandbox --drill nat-both         break both NAT instances, one after the other
    jupiterd sandbox --drill all --json       one JSON report (a list for `all`)
    jupiterd sandbox --replicas 3             three jupiterd replicas with a leader lease
    jupiterd sandbox --replicas 3 --drill ha-all   the six drills of replicated deciders
                                              (ha-cutoff, ha-dies, ha-kill, ha-stop,
                                              ha-dynamo, ha-witness; one at a time too)
    jupiterd sandbox --drill SERVICE --aws-timing realistic[:SCALE]
                                              ... with AWS's delays (boot, application
                                              start, health checks, Route 53), and the
                                              recovery split into detect/boot/app/attach

Everything listens on loopback (and, for the NAT instances, in network
namespaces the sandbox creates); nothing reaches AWS.

Ctrl-C, SIGTERM, closing the terminal (SIGHUP, unless started under nohup)
and a closed stdout (`jupiterd sandbox | tee log`, then Ctrl-C) all stop
everything it started. Its processes die with it even if it is killed, and
a start removes the network namespaces a killed sandbox left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from jupiterd.core.types import Role

from .stack import SandboxError, Stack, free_local_port

CONTROL_PORT = 9479


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "sandbox",
        help="run the whole Jupiter stack on this machine (moto, services, jupiterd)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--drill",
        metavar="SERVICE",
        help="run a failover drill of SERVICE (or 'nat-both': both NAT instances one "
        "after the other; or 'all', one after another, nat-both last with --failback) and exit",
    )
    p.add_argument(
        "--failback",
        action="store_true",
        help="with --drill: then heal the primary and fail back, checked the same way",
    )
    p.add_argument("--json", action="store_true", help="with --drill: print the report as JSON")
    p.add_argument(
        "--replicas",
        type=int,
        default=0,
        metavar="N",
        help="run N (2-5) jupiterd replicas as processes sharing a DynamoDB lease, each with "
        "its own path to every service (no NAT pool); drills: ha-cutoff, ha-dies, ha-kill, "
        "ha-stop, ha-dynamo, ha-witness, ha-all",
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=9478,
        metavar="PORT",
        help="jupiterd's /status and /metrics port (default 9478, else a free one)",
    )
    p.add_argument(
        "--aws-timing",
        metavar="realistic[:SCALE]",
        type=_timing_spec,
        help="answer as AWS would, not at once: an instance started stays pending for "
        "its boot, its service starts after the OS boot and its own start time, targets "
        "turn healthy after interval x threshold, Route 53 changes stay PENDING about a "
        "minute; every figure times SCALE (default 1, e.g. 0.05 for CI)",
    )
    p.set_defaults(func=_cmd)


def _timing_spec(value: str) -> str:
    from .timing import TimingSpecError, parse_spec

    try:
        parse_spec(value)
    except TimingSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def timing_for(args: argparse.Namespace) -> Any:
    """The timing model ``--aws-timing`` asks for, or None."""
    spec = getattr(args, "aws_timing", None)
    if not spec:
        return None
    from .timing import TimingModel

    return TimingModel.from_spec(spec)


class Console:
    """Where the sandbox writes: progress to stdout (to stderr for a --json
    drill, whose report is stdout's), reports to stdout. A write never
    raises. When stdout breaks (EPIPE: the reader of `jupiterd sandbox | tee
    log` died with the same Ctrl-C; EIO: the terminal was closed) it is
    pointed at /dev/null, so neither a later write nor the flush at exit
    fails, progress goes on to stderr while that works, and ``on_lost`` runs
    once: the sandbox stops. ``check()`` notices a broken stdout without
    writing to it. A broken stderr is only silenced."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.lost: set[str] = set()
        self.on_lost: Callable[[str], None] = lambda reason: None

    def say(self, text: str) -> None:
        if self.quiet or not self._write("stdout", text):
            self._write("stderr", text)

    def report(self, text: str) -> None:
        self._write("stdout", text)

    def error(self, text: str) -> None:
        self._write("stderr", text)

    def check(self) -> None:
        stream = sys.stdout
        if "stdout" in self.lost or stream is None:
            return
        try:
            poller = select.poll()
            poller.register(stream.fileno(), 0)  # errors and hang-ups are always reported
            events = poller.poll(0)
        except (OSError, ValueError):
            return
        if events and events[0][1] & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
            self._lose("stdout", "its reader is gone")

    def _write(self, name: str, text: str) -> bool:
        stream: TextIO | None = getattr(sys, name)
        if name in self.lost or stream is None:
            return False
        try:
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError) as exc:
            self._lose(name, exc.strerror if isinstance(exc, OSError) else str(exc))
            return False
        return True

    def _lose(self, name: str, why: str | None) -> None:
        self.lost.add(name)
        stream: TextIO | None = getattr(sys, name)
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)
        if name == "stdout":
            self.on_lost(f"stdout is closed ({why})")


def _cmd(args: argparse.Namespace) -> int:
    if args.failback and not args.drill:
        from jupiterd.cli.common import UsageError

        raise UsageError("--failback goes with --drill SERVICE")
    if args.replicas and not 2 <= args.replicas <= 5:
        from jupiterd.cli.common import UsageError

        raise UsageError("--replicas takes 2 to 5")
    if args.replicas and args.failback:
        from jupiterd.cli.common import UsageError

        raise UsageError("--failback is for the single-daemon drills, not --replicas")
    console = Console(quiet=bool(args.drill and args.json))
    try:
        return asyncio.run(_main(args, console))
    except SandboxError as exc:
        console.error(f"jupiterd sandbox: {exc}")
        return 1


def _stop_signals() -> list[signal.Signals]:
    """SIGINT, SIGTERM, and SIGHUP unless it is ignored (nohup: the operator
    asked the sandbox to outlive the terminal)."""
    sigs = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        sigs.append(signal.SIGHUP)
    return sigs


async def _watch_output(console: Console) -> None:
    while True:
        console.check()
        await asyncio.sleep(0.5)


async def _main(args: argparse.Namespace, console: Console) -> int:
    say = console.say
    stop = asyncio.Event()
    why: list[str] = []

    def request_stop(reason: str) -> None:
        if not why:
            why.append(reason)
        stop.set()

    console.on_lost = request_stop
    loop = asyncio.get_running_loop()
    sigs = _stop_signals()
    for sig in sigs:
        loop.add_signal_handler(sig, request_stop, sig.name)
    watcher = asyncio.create_task(_watch_output(console))
    stack = Stack(http_port=args.http_port, log=say, replicas=args.replicas)
    stack.timing = timing_for(args)
    who = f"{args.replicas} jupiterd replicas" if args.replicas else "jupiterd"
    say(f"starting the sandbox: moto, the Jupiter topology, the services, {who}")
    try:
        start = asyncio.create_task(stack.start())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([start, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
            say("interrupted while starting")
            return 130
        stopper.cancel()
        start.result()
        say(f"sandbox up in {stack.started_in:.1f}s")
        if args.drill and args.replicas:
            from .ha_drill import run_drills

            return await run_drills(stack, args, stop, console)
        if args.drill:
            return await _drills(stack, args, stop, console)
        return await _interactive(stack, stop, say)
    finally:
        say(f"stopping the sandbox ({why[0]})" if why else "stopping the sandbox")
        await stack.stop()
        watcher.cancel()
        for sig in sigs:
            loop.remove_signal_handler(sig)
        say("sandbox stopped: every process it started has exited")


async def _drills(
    stack: Stack, args: argparse.Namespace, stop: asyncio.Event, console: Console
) -> int:
    from .drill import BOTH_NAT, drill, drill_names, render

    say = console.say
    names = drill_names(stack) if args.drill == "all" else [args.drill]
    if args.drill == "all" and not args.failback and BOTH_NAT in names:
        # Without failbacks the NAT members stay on their standby after their
        # own drills: nothing would be left for nat-both to break and fail over.
        names.remove(BOTH_NAT)
        say(f"drill {BOTH_NAT}: left out of --drill all without --failback (run it with it)")
    unknown = [n for n in names if n not in drill_names(stack)]
    if unknown:
        say(f"no service named {unknown[0]} (have: {', '.join(drill_names(stack))})")
        return 2
    reports = []
    for name in names:
        if stop.is_set():
            break
        say(f"drill {name}: breaking its primary and waiting for jupiterd")
        task = asyncio.create_task(drill(stack, name, failback=args.failback))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            say("interrupted")
            return 130
        report = task.result()
        reports.append(report)
        if not args.json:
            console.report(render(report))
    ok = bool(reports) and all(r["ok"] for r in reports)
    if args.json:
        console.report(json.dumps(reports[0] if args.drill != "all" else reports, indent=2))
    elif len(reports) > 1:
        console.report("== summary")
        for r in reports:
            console.report(
                f"  {r['service']:12} {'PASSED' if r['ok'] else 'FAILED'}  "
                f"detect {r.get('detect_seconds')}s  failover {r.get('failover_seconds')}s"
            )
    return 0 if ok else 1


async def _interactive(stack: Stack, stop: asyncio.Event, say: Any) -> int:
    from aiohttp import web

    async def act(request: web.Request) -> web.Response:
        action, service = request.match_info["action"], request.match_info["service"]
        if service not in stack.config.services:
            return web.Response(status=404, text=f"no service named {service}\n")
        if action == "break":
            return web.Response(text=stack.break_service(service) + "\n")
        if action == "heal":
            return web.Response(text=stack.heal_service(service) + "\n")
        if stack.replicas is not None:
            return web.Response(status=409, text="with --replicas, the leader decides\n")
        from jupiterd.core.execution import FailoverRequest

        active = stack.supervisor.state.services[service].active
        stack.heal_service(service)
        outcome = await stack.executor.run(
            FailoverRequest(service, active, active.other, f"sandbox: {action} requested", "cli")
        )
        await stack.supervisor.refresh_inventory()
        return web.Response(text=f"{outcome.result}: {outcome.detail}\n")

    app = web.Application()
    app.router.add_post(r"/{action:break|heal|failover|failback}/{service}", act)
    if stack.replicas is not None:
        from .ha_control import add_routes

        add_routes(app, stack)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    port = free_local_port(CONTROL_PORT)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    api = f"http://127.0.0.1:{stack.http_port}"
    ctl = f"http://127.0.0.1:{port}"
    if stack.replicas is not None:
        from .ha_control import banner

        lines = [
            "",
            "The Jupiter stack runs on this machine, watched by replicas.",
            f"  AWS      moto at {stack.endpoint} (credentials: testing/testing)",
        ]
        lines += _services_table(stack) + banner(stack, ctl)
        return await _wait_stopped(stack, stop, say, lines, runner)
    lines = [
        "",
        "The Jupiter stack runs on this machine. Where to look:",
        f"  status   curl -s {api}/status",
        f"  metrics  curl -s {api}/metrics",
        f"  health   curl -s {api}/healthz",
        f"  log      tail -f {stack.log_path}",
        f"  config   {stack.config_path}",
        f"  AWS      moto at {stack.endpoint} (credentials: testing/testing)",
    ]
    lines += _services_table(stack)
    lines += [
        "",
        "Break a service (kills its active instance's process) and watch jupiterd fail it over:",
        f"  curl -X POST {ctl}/break/signaling",
        "Heal it and move the traffic back:",
        f"  curl -X POST {ctl}/failback/signaling",
        "Or, from another shell, the operator commands against the sandbox:",
        "  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "
        "AWS_EC2_METADATA_DISABLED=true",
        f"  jupiterd status --config {stack.config_path}",
        "",
        "Ctrl-C stops everything.",
    ]
    return await _wait_stopped(stack, stop, say, lines, runner)


def _services_table(stack: Stack) -> list[str]:
    lines = [
        "",
        "Services (primary / backup, and the front door standing in for the ALB/NLB/Elastic IP):",
    ]
    for name in stack.config.services:
        p, b = stack.instances[(name, Role.PRIMARY)], stack.instances[(name, Role.BACKUP)]
        door = stack.public_target(name) if name not in stack.nat_services else "route tables"
        where = (
            f"{p.address}:{p.port}" if p.port else p.address,
            f"{b.address}:{b.port}" if b.port else b.address,
        )
        lines.append(f"  {name:12} {where[0]:18} / {where[1]:18} front door {door}")
    return lines


def _states(stack: Stack) -> str:
    if stack.replicas is None:
        return ", ".join(
            f"{n}={s.active}:{s.target(s.active).status}"
            for n, s in stack.supervisor.state.services.items()
        )
    with contextlib.suppress(Exception):
        lease = stack.replicas.lease() or {}
        routes = ", ".join(f"{n}={stack.routes.get(n)}" for n in stack.config.services)
        return f"leader {lease.get('owner', 'none')}; traffic: {routes}"
    return "the lease cannot be read"


async def _wait_stopped(
    stack: Stack, stop: asyncio.Event, say: Any, lines: list[str], runner: Any
) -> int:
    say("\n".join(lines))
    last = time.monotonic()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if time.monotonic() - last > 30:
                last = time.monotonic()
                say(f"[{time.strftime('%H:%M:%S')}] {_states(stack)}")
    finally:
        await runner.cleanup()
    return 0
