"""`jupiterd sandbox`: the Jupiter stack on one machine, and live drills.

    jupiterd sandbox                          run until Ctrl-C; break and heal services
    jupiterd sandbox --drill SERVICE|all      break, fail over, verify; exit 0 if all passed
    jupiterd sandbox --drill SERVICE --failback   ... then heal and fail back
    jupiterd sandbox --drill all --json       one JSON report (a list for `all`)

Everything listens on loopback (and, for the NAT instances, in network
namespaces the sandbox creates); nothing reaches AWS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any

from ..machine import Role
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
        help="run a failover drill of SERVICE (or 'all', one after another) and exit",
    )
    p.add_argument(
        "--failback",
        action="store_true",
        help="with --drill: then heal the primary and fail back, checked the same way",
    )
    p.add_argument("--json", action="store_true", help="with --drill: print the report as JSON")
    p.add_argument(
        "--http-port",
        type=int,
        default=9478,
        metavar="PORT",
        help="jupiterd's /status and /metrics port (default 9478, else a free one)",
    )
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    if args.failback and not args.drill:
        from ..cli import UsageError

        raise UsageError("--failback goes with --drill SERVICE")
    try:
        return asyncio.run(_main(args))
    except SandboxError as exc:
        print(f"jupiterd sandbox: {exc}", file=sys.stderr)
        return 1


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _main(args: argparse.Namespace) -> int:
    quiet = bool(args.drill and args.json)
    say = _err if quiet else (lambda text: print(text, flush=True))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stack = Stack(http_port=args.http_port, log=say)
    say("starting the sandbox: moto, the Jupiter topology, the services, jupiterd")
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
        if args.drill:
            return await _drills(stack, args, stop, say)
        return await _interactive(stack, stop, say)
    finally:
        say("stopping the sandbox")
        await stack.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        say("sandbox stopped: every process it started has exited")


async def _drills(stack: Stack, args: argparse.Namespace, stop: asyncio.Event, say: Any) -> int:
    from .drill import drill, render

    names = list(stack.config.services) if args.drill == "all" else [args.drill]
    unknown = [n for n in names if n not in stack.config.services]
    if unknown:
        say(f"no service named {unknown[0]} (have: {', '.join(stack.config.services)})")
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
            print(render(report), flush=True)
    ok = bool(reports) and all(r["ok"] for r in reports)
    if args.json:
        print(json.dumps(reports[0] if args.drill != "all" else reports, indent=2))
    elif len(reports) > 1:
        print("== summary")
        for r in reports:
            print(
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
        from ..executor_api import FailoverRequest

        active = stack.supervisor.state.services[service].active
        stack.heal_service(service)
        outcome = await stack.executor.run(
            FailoverRequest(service, active, active.other, f"sandbox: {action} requested", "cli")
        )
        await stack.supervisor.refresh_inventory()
        return web.Response(text=f"{outcome.result}: {outcome.detail}\n")

    app = web.Application()
    app.router.add_post(r"/{action:break|heal|failover|failback}/{service}", act)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    port = free_local_port(CONTROL_PORT)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    api = f"http://127.0.0.1:{stack.http_port}"
    ctl = f"http://127.0.0.1:{port}"
    lines = [
        "",
        "The Jupiter stack runs on this machine. Where to look:",
        f"  status   curl -s {api}/status",
        f"  metrics  curl -s {api}/metrics",
        f"  health   curl -s {api}/healthz",
        f"  log      tail -f {stack.log_path}",
        f"  config   {stack.config_path}",
        f"  AWS      moto at {stack.endpoint} (credentials: testing/testing)",
        "",
        "Services (primary / backup, and the front door standing in for the ALB/NLB/Elastic IP):",
    ]
    for name in stack.config.services:
        p, b = stack.instances[(name, Role.PRIMARY)], stack.instances[(name, Role.BACKUP)]
        door = stack.public_target(name) if name != "nat" else "route tables"
        where = (
            f"{p.address}:{p.port}" if p.port else p.address,
            f"{b.address}:{b.port}" if b.port else b.address,
        )
        lines.append(f"  {name:12} {where[0]:18} / {where[1]:18} front door {door}")
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
    say("\n".join(lines))
    last = time.monotonic()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if time.monotonic() - last > 30:
                last = time.monotonic()
                states = ", ".join(
                    f"{n}={s.active}:{s.target(s.active).status}"
                    for n, s in stack.supervisor.state.services.items()
                )
                say(f"[{time.strftime('%H:%M:%S')}] {states}")
    finally:
        await runner.cleanup()
    return 0
