#!/usr/bin/env python3
"""Probe cost per kind on loopback: probes per second on one core, CPU per probe.

    python bench/probes.py [--probes 2000] [--concurrency 50] [--kinds tcp,http,...]

Each peer runs in its own process, so the figures are the probing process's
own CPU (time.process_time) and wall time, with `concurrency` probes in
flight at once on one event loop (one core). Every probe must pass; a
failing one is reported and the kind is marked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import probes
from bench.peers import node_sio, spawn
from tests.peers.commands import python_peer

TOKEN = "bench-token"
SECRET = "bench-secret"


async def measure(
    kind: str, target: str, options: dict, n: int, conc: int
) -> tuple[float, float, int]:
    k = probes.get_kind(kind)
    opts = k.parse_options(options)
    sem = asyncio.Semaphore(conc)
    failures: list[str] = []

    async def one() -> None:
        async with sem:
            r = await k.probe(target, opts, 5.0)
            if not r.ok:
                failures.append(f"{r.reason}: {r.detail}")

    for _ in range(min(20, n)):  # warm-up
        await one()
    failures.clear()
    c0, w0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    if failures:
        print(f"  {kind}: {len(failures)} failed, first: {failures[0]}")
    return cpu, wall, len(failures)


def cases(stack: contextlib.ExitStack, kinds: set[str]) -> list[tuple[str, str, str, dict]]:
    out: list[tuple[str, str, str, dict]] = []
    tb = stack.enter_context(
        spawn(
            python_peer(
                "thingsboard_standin.py",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--user",
                "probe@example.com",
                "--password",
                "pw",
                "--device-token",
                "dev1",
            )
        )
    )
    out.append(("tcp", "tcp", tb, {}))
    out.append(("http", "http", f"http://{tb}/login", {"body_contains": "ThingsBoard"}))
    out.append(("thingsboard", "thingsboard (liveness)", tb, {}))
    out.append(
        (
            "thingsboard",
            "thingsboard (login+api)",
            tb,
            {"username": "probe@example.com", "password": "pw"},
        )
    )
    if kinds & {"socketio"}:
        sio = stack.enter_context(
            spawn(node_sio("--major", "4", "--host", "127.0.0.1", "--port", "0"))
        )
        out.append(("socketio", "socketio (polling)", sio, {"transport": "polling"}))
        out.append(("socketio", "socketio (upgrade)", sio, {}))
    if kinds & {"stun", "turn"}:
        from jupiterd.sandbox.peers.coturn import free_port_pair

        port = free_port_pair("127.0.0.1")
        turn = stack.enter_context(
            spawn(
                python_peer(
                    "coturn.py", "--host", "127.0.0.1", "--port", str(port), "--secret", SECRET
                )
            )
        )
        out.append(("stun", "stun (udp)", turn, {}))
        out.append(("stun", "stun (tcp)", turn, {"transport": "tcp"}))
        out.append(("turn", "turn (401 challenge)", turn, {}))
        out.append(("turn", "turn (allocate+release)", turn, {"secret": SECRET}))
    if kinds & {"frp"}:
        frps = stack.enter_context(
            spawn(
                python_peer(
                    "frps_standin.py", "--host", "127.0.0.1", "--port", "0", "--token", TOKEN
                )
            )
        )
        out.append(("frp", "frp (plain, yamux)", frps, {"token": TOKEN}))
        out.append(("frp", "frp (tls, yamux)", frps, {"token": TOKEN, "tls": True}))
    out.append(("icmp", "icmp", "127.0.0.1", {}))
    return [c for c in out if c[0] in kinds]


async def run(args: argparse.Namespace) -> None:
    kinds = set(args.kinds.split(","))
    with contextlib.ExitStack() as stack:
        todo = cases(stack, kinds)
        print(
            f"{args.probes} probes per case, {args.concurrency} in flight, one event loop (one core)"
        )
        print(f"{'case':28} {'probes/s':>10} {'CPU ms/probe':>13} {'wall ms/probe':>14}")
        for kind, label, target, options in todo:
            n = args.probes
            conc = args.concurrency
            if kind == "turn" and "secret" in options:
                # A released allocation keeps its relay port for ~1 s and the
                # test coturn has 64 of them: stay well under that rate.
                n, conc = min(n, 40), 1
            cpu, wall, failed = await measure(kind, target, options, n, conc)
            mark = "" if not failed else f"  ({failed} failed)"
            print(
                f"{label:28} {n / wall:10.0f} {1e3 * cpu / n:13.3f} {1e3 * wall / n:14.3f}{mark}",
                flush=True,
            )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--probes", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--kinds", default="tcp,http,socketio,stun,turn,frp,thingsboard,icmp")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
