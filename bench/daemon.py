#!/usr/bin/env python3
"""Daemon benchmarks: detection latency, scheduling at scale, memory.

    python bench/daemon.py detection [--runs 10] [--mode refused|silent|both]
    python bench/daemon.py scale [--targets 1000] [--seconds 30]
    python bench/daemon.py memory

All traffic stays on loopback. Figures are printed; nothing is asserted.

detection: three http services, default thresholds (interval 2 s, fast
  interval 0.25 s, timeout 1 s, fall 3, jitter 0.1). At a random moment one
  primary's server is killed (refused: the listener closes) or freezes
  (silent: it accepts and never answers). Measured: from that moment to the
  failover decision (the executor being called).
scale: N tcp targets on a handful of loopback listeners at a 1 s interval;
  measured: probe-start lateness (p50/p99/max), CPU share of one core, RSS.
memory: RSS of the supervisor with the full example configuration, its
  addresses rewritten to loopback (no traffic ever leaves the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiohttp import web
from prometheus_client import CollectorRegistry

from jupiterd import logs
from jupiterd.config import parse_config
from jupiterd.daemon import Supervisor
from jupiterd.inventory import StaticInventory
from jupiterd.metrics import Metrics
from tests.daemon_helpers import FakeExecutor


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


class Server:
    """An HTTP server that can be killed (refused) or frozen (silent)."""

    def __init__(self, host: str) -> None:
        self.host, self.port = host, 0
        self.frozen = False
        self.runner: web.AppRunner | None = None

    async def _ok(self, request: web.Request) -> web.Response:
        if self.frozen:
            await asyncio.sleep(3600)
        return web.Response(text="ok")

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/", self._ok)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def kill(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def one_detection(mode: str, rng: random.Random, watch: bool = True) -> float:
    names = ["signaling", "frp", "thingsboard"]
    servers = {n: Server(f"127.0.0.{10 + i}") for i, n in enumerate(names)}
    for s in servers.values():
        await s.start()
    services = {
        n: {
            "probe": {"kind": "http", "port": s.port, "watch": watch},
            "primary": {"address": s.host},
            "backup": {"address": "127.0.1.1"},
        }
        for n, s in servers.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config({"state_dir": tmp, "services": services})
        executor = FakeExecutor(delay=0.01)
        decided = asyncio.get_running_loop().create_future()
        executor.on_run = lambda req: decided.done() or decided.set_result(time.monotonic())
        sup = Supervisor(
            cfg,
            executor=executor,
            inventory=StaticInventory(cfg),
            metrics=Metrics(CollectorRegistry()),
            rng=rng,
        )
        first_fail: list[float] = []
        on_result = sup._on_result

        def spy(name: str, role: Any, result: Any, at: float) -> None:
            if name == "signaling" and not result.ok and not first_fail:
                first_fail.append(time.monotonic())
            on_result(name, role, result, at)

        sup._on_result = spy  # type: ignore[method-assign]
        await sup.start()
        await asyncio.sleep(4 + rng.uniform(0, 2))  # everything up, random phase
        victim = servers["signaling"]
        broke = time.monotonic()
        if mode == "refused":
            await victim.kill()
        else:
            victim.frozen = True
        killed = time.monotonic()
        try:
            at = await asyncio.wait_for(decided, 30)
            print(
                f"    kill took {killed - broke:.3f}s, first failed probe after "
                f"{first_fail[0] - broke:.3f}s",
                flush=True,
            )
        finally:
            await sup.stop(grace=0.5)
            for s in servers.values():
                s.frozen = False
                await s.kill()
    return at - broke


async def detection(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    modes = ["refused", "silent"] if args.mode == "both" else [args.mode]
    print(
        f"detection: {args.runs} runs per mode; defaults interval 2s, fast 0.25s, timeout 1s, "
        f"fall 3; watch {'on' if args.watch else 'off'}"
    )
    for mode in modes:
        times = []
        for i in range(args.runs):
            t = await one_detection(mode, rng, args.watch)
            times.append(t)
            print(f"  {mode} run {i + 1}/{args.runs}: {t:.3f}s", flush=True)
        print(
            f"{mode} (watch {'on' if args.watch else 'off'}): median {statistics.median(times):.3f}s  p95 {pct(times, 95):.3f}s  "
            f"min {min(times):.3f}s  max {max(times):.3f}s  (n={len(times)})"
        )


async def scale(args: argparse.Namespace) -> None:
    from bench.peers import spawn

    with spawn(
        [sys.executable, str(ROOT / "bench" / "listeners.py"), str(args.listeners)]
    ) as addrs:
        await _scale(args, addrs.split())


async def _scale(args: argparse.Namespace, addrs: list[str]) -> None:
    per = args.targets // 2  # a service has two targets; both are probed here
    services: dict[str, Any] = {}
    for i in range(per):
        host, port = addrs[i % len(addrs)].rsplit(":", 1)
        services[f"s{i}"] = {
            "probe": {"kind": "tcp", "port": port},
            "primary": {"address": host},
            "backup": {"address": host},
        }
    lateness: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config(
            {
                "state_dir": tmp,
                "services": services,
                "defaults": {"interval": "1s", "fast_interval": "250ms", "timeout": "500ms"},
                "guards": {"isolation": {"enabled": False}},
            }
        )
        inv = StaticInventory(
            cfg,
            {
                (n, r): "running"
                for n in services
                for r in __import__("jupiterd.machine").machine.Role
            },
        )
        metrics = Metrics(CollectorRegistry())
        sup = Supervisor(
            cfg, executor=FakeExecutor(), inventory=inv, metrics=metrics, rng=random.Random(1)
        )
        await sup.start()
        for t in sup.targets.values():
            t.loop.on_late = lateness.append
        print(
            f"scale: {len(sup.targets)} targets at 1s on {args.listeners} loopback listeners; "
            f"warming up {args.warmup}s",
            flush=True,
        )
        await asyncio.sleep(args.warmup)
        lateness.clear()
        probes0 = sum(t.loop.probes_run for t in sup.targets.values())
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(args.seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        probes = sum(t.loop.probes_run for t in sup.targets.values()) - probes0
        up = sum(1 for s in sup.state.services.values() if s.primary.status.value == "up")
        await sup.stop(grace=0.5)
    print(
        f"targets {len(services) * 2}: {probes / wall:.0f} probes/s, CPU {100 * cpu / wall:.1f}% "
        f"of one core ({1e3 * cpu / max(probes, 1):.3f} ms CPU per probe incl. scheduling)"
    )
    print(
        f"start lateness: p50 {1e3 * pct(lateness, 50):.1f} ms  p99 {1e3 * pct(lateness, 99):.1f} ms  "
        f"max {1e3 * max(lateness):.1f} ms  (n={len(lateness)})"
    )
    print(
        f"primaries up: {up}/{len(services)}; RSS {rss_mb():.1f} MB; "
        f"maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MB"
    )


async def memory(args: argparse.Namespace) -> None:
    import yaml

    doc = yaml.safe_load((ROOT / "config" / "jupiter.example.yaml").read_text())
    for i, svc in enumerate(doc["services"].values()):
        svc["primary"]["address"] = f"127.0.3.{2 * i + 1}"
        svc["backup"]["address"] = f"127.0.3.{2 * i + 2}"
    os.environ.setdefault("JUPITERD_TURN_SECRET", "x")
    os.environ.setdefault("JUPITERD_FRP_TOKEN", "x")
    os.environ.setdefault("JUPITERD_TB_PASSWORD", "x")
    with tempfile.TemporaryDirectory() as tmp:
        doc["state_dir"] = tmp
        before = rss_mb()
        cfg = parse_config(doc)
        sup = Supervisor(
            cfg,
            executor=FakeExecutor(),
            inventory=StaticInventory(cfg),
            metrics=Metrics(CollectorRegistry()),
        )
        await sup.start()
        await asyncio.sleep(args.seconds)
        print(
            f"memory: RSS {rss_mb():.1f} MB with the full example config (addresses on loopback), "
            f"{before:.1f} MB before loading it; {sum(t.loop.probes_run for t in sup.targets.values())}"
            " probes run"
        )
        await sup.stop(grace=0.5)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("detection")
    d.add_argument("--runs", type=int, default=10)
    d.add_argument("--mode", choices=["refused", "silent", "both"], default="both")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument(
        "--no-watch",
        dest="watch",
        action="store_false",
        help="no idle watch connection: periodic probes only",
    )
    s = sub.add_parser("scale")
    s.add_argument("--targets", type=int, default=1000)
    s.add_argument("--listeners", type=int, default=8)
    s.add_argument("--seconds", type=float, default=30)
    s.add_argument("--warmup", type=float, default=3)
    m = sub.add_parser("memory")
    m.add_argument("--seconds", type=float, default=5)
    args = p.parse_args()
    logs.configure("error", "json", stream=open(os.devnull, "w"))  # noqa: SIM115
    asyncio.run({"detection": detection, "scale": scale, "memory": memory}[args.cmd](args))


if __name__ == "__main__":
    main()
