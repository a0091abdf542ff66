#!/usr/bin/env python3
"""Daemon benchmarks: detection latency, scheduling at scale, memory.

    python bench/daemon.py detection [--runs 10] [--mode refused|silent|both]
        [--kinds http,thingsboard,socketio,frp,stun,turn,icmp] [--no-heartbeat]
    python bench/daemon.py heartbeat-cpu [--services 20] [--seconds 10] [--rounds 2]
    python bench/daemon.py scale [--targets 1000] [--seconds 30] [--scrape 15]
    python bench/daemon.py scale-search [--start 1000] [--step 1000] [--scrape 15]
    python bench/daemon.py memory [--process]
    python bench/daemon.py exposition [--targets 2000]
    python bench/daemon.py growth [--targets 2000] [--minutes 1]
    python bench/daemon.py startup [--runs 5] [--services 5] [--aws]

All traffic stays on loopback (icmp: in network namespaces the bench creates
and removes). Figures are printed; nothing is asserted.

detection: one service per kind, default thresholds (interval 2 s, fast
  interval 0.25 s, timeout 1 s, fall 3, jitter 0.1) and heartbeat, its
  primary on a real peer or stand-in (icmp: in network namespaces the bench
  creates, root only). At a random moment the primary is killed (refused)
  or freezes (silent: SIGSTOP, it accepts and never answers; icmp: the
  namespace ignores echoes). Measured: from that moment to the failover
  decision (the executor being called).
heartbeat-cpu: per kind, CPU of this process per target-second with
  heartbeats on and off, in alternating rounds of one run.
scale: N tcp targets on a handful of loopback listeners at a 1 s interval;
  measured: probe-start lateness (p50/p99/max), CPU share of one core, RSS.
  The supervisor runs in this process (pinned to core 0 unless --no-pin),
  the listeners in their own (on the other cores). ``--scrape S`` renders
  /metrics on the loop every S seconds, as a Prometheus scrape does.
scale-search: `scale` in a fresh process per count, counts growing by
  ``--step`` until p99 lateness reaches 100 ms; prints the largest count
  that stayed under it.
memory: RSS of the supervisor with the full example configuration, its
  addresses rewritten to loopback (no traffic ever leaves the machine);
  ``--process``: of `jupiterd run` as a process, the AWS client included.
exposition: the /metrics answer of a supervisor probing N tcp targets: its
  size, series and CPU per render, without and with the ``*_created`` series
  (prometheus_client's default, which jupiterd turns off), in one run.
growth: `jupiterd run` as a process (monitor-only, loopback-only config)
  with N tcp targets at a 1 s interval; its RSS sampled from /proc every
  ``--sample`` seconds: at start, after the warm-up, at the end, and the
  slope over the second half of the run (growth that is not start-up).
startup: `jupiterd run` as a process; from exec to /healthz answering and
  to the first probe arriving at a listener in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiohttp import web
from prometheus_client import CollectorRegistry

from bench.peers import pct
from jupiterd.config import parse_config
from jupiterd.core.inventory import StaticInventory
from jupiterd.runtime.supervisor import Supervisor
from jupiterd.telemetry import logs
from jupiterd.telemetry.metrics import Metrics
from tests.daemon_helpers import FakeExecutor


def rss_mb() -> float:
    """This process's RSS."""
    from bench.peers import rss_mb as rss_of

    return rss_of(os.getpid())


def _listeners(n: int, cpus: set[int] | None) -> Any:
    """bench/listeners.py in its own process; yields its addresses."""
    from bench.peers import bench_script, peer_process

    return peer_process(bench_script("listeners.py", str(n)), cpus=cpus)


def _supervisor(tmp: str, services: dict[str, Any], **defaults: str) -> Supervisor:
    """A supervisor over ``services`` with both roles running (both probed),
    no isolation guard and a fake executor."""
    from jupiterd.core.types import Role

    cfg = parse_config(
        {
            "state_dir": tmp,
            "services": services,
            "defaults": defaults,
            "guards": {"isolation": {"enabled": False}},
        }
    )
    inv = StaticInventory(cfg, {(n, r): "running" for n in services for r in Role})
    return Supervisor(
        cfg,
        executor=FakeExecutor(),
        inventory=inv,
        metrics=Metrics(CollectorRegistry()),
        rng=random.Random(1),
    )


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


DETECTION_KINDS = ("http", "thingsboard", "socketio", "frp", "stun", "turn", "icmp")
TB_USER, TB_PASSWORD = "probe@bench.example", "bench-password"
FRP_TOKEN, TURN_SECRET = "bench-token", "bench-secret"
ICMP_TARGET, ICMP_BACKUP = "198.18.0.2", "198.18.0.1"  # in the namespaces the bench creates


class Victim:
    """The service whose primary breaks: a peer (a process, the in-process
    HTTP server, or a network namespace for icmp) that can be killed
    (refused) or frozen (silent: it accepts and never answers)."""

    def __init__(self, kind: str, icmp_peer: str | None = None) -> None:
        self.kind = kind
        self.icmp_peer = icmp_peer
        self.options: dict[str, Any] = {}
        self.host, self.port = "127.0.0.1", 0
        self.backup = "127.0.1.1"
        self.server: Server | None = None
        self.proc: Any = None

    async def start(self) -> None:
        from jupiterd.sandbox.peers.coturn import free_port_pair
        from jupiterd.sandbox.peers.process import Peer
        from tests.peers.commands import node_peer, python_peer

        kind = self.kind
        if kind == "http":
            self.server = Server("127.0.0.10")
            await self.server.start()
            self.host, self.port = self.server.host, self.server.port
            return
        if kind == "icmp":
            self.host, self.backup = ICMP_TARGET, ICMP_BACKUP
            self._icmp(answer=True)
            return
        if kind == "thingsboard":
            cmd = python_peer(
                "thingsboard_standin.py",
                *("--host", "127.0.0.1", "--port", "0", "--user", TB_USER),
                *("--password", TB_PASSWORD),
            )
        elif kind == "socketio":
            cmd = node_peer("sio_server.js", "--major", "4", "--host", "127.0.0.1", "--port", "0")
        elif kind == "frp":
            cmd = python_peer("frps_standin.py", "--host", "127.0.0.1", "--port", "0")
            cmd += ["--token", FRP_TOKEN]
            self.options = {"token": FRP_TOKEN}
        else:  # stun, turn: coturn
            port = free_port_pair("127.0.0.1")
            cmd = python_peer("coturn.py", "--host", "127.0.0.1", "--port", str(port))
            cmd += ["--secret", TURN_SECRET]
            if kind == "turn":
                self.options = {"secret": TURN_SECRET}
        self.proc = await asyncio.to_thread(Peer, cmd)
        _drain(self.proc)
        self.port = self.proc.port

    def _icmp(self, *, answer: bool, reject: bool = False) -> None:
        q = self.icmp_peer
        assert q is not None
        run = functools.partial(subprocess.run, capture_output=True, timeout=20)
        run(["ip", "netns", "exec", q, "iptables", "-F", "INPUT"])
        ignore = "0" if answer else "1"
        run(["ip", "netns", "exec", q, "sysctl", "-qw", f"net.ipv4.icmp_echo_ignore_all={ignore}"])
        if reject:
            rule = ["-p", "icmp", "--icmp-type", "echo-request", "-j", "REJECT"]
            rule += ["--reject-with", "icmp-host-unreachable"]
            run(["ip", "netns", "exec", q, "iptables", "-A", "INPUT", *rule], check=True)

    def service(self, watch: bool, heartbeat: bool) -> dict[str, Any]:
        probe: dict[str, Any] = {"kind": self.kind, "options": self.options}
        if self.kind != "icmp":
            probe["port"] = self.port
            if not watch:
                probe["watch"] = False
        if not heartbeat:
            probe["heartbeat"] = False
        return {
            "probe": probe,
            "primary": {"address": self.host},
            "backup": {"address": self.backup},
        }

    async def break_(self, mode: str) -> None:
        if self.kind == "icmp":
            # refused: the namespace answers "host unreachable"; silent: it
            # stops answering echo requests.
            self._icmp(answer=mode == "refused", reject=mode == "refused")
        elif self.server is not None:
            if mode == "refused":
                await self.server.kill()
            else:
                self.server.frozen = True
        elif mode == "refused":
            self.proc.crash()
        else:
            os.killpg(self.proc.proc.pid, signal.SIGSTOP)

    async def stop(self) -> None:
        if self.kind == "icmp":
            self._icmp(answer=True)
        if self.server is not None:
            self.server.frozen = False
            await self.server.kill()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.proc.pid, signal.SIGCONT)
            self.proc.stop()


def _drain(peer: Any) -> None:
    """Read a peer's stdout so that its event lines never fill the pipe."""
    import threading

    def drain() -> None:
        with contextlib.suppress(Exception):
            for _ in peer.proc.stdout:
                pass

    threading.Thread(target=drain, daemon=True).start()


async def one_detection(
    kind: str,
    mode: str,
    rng: random.Random,
    watch: bool = True,
    heartbeat: bool = True,
    icmp_peer: str | None = None,
) -> float:
    victim = Victim(kind, icmp_peer)
    await victim.start()
    try:
        services = {"victim": victim.service(watch, heartbeat)}
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
            await sup.start()
            try:
                await asyncio.sleep(4 + rng.uniform(0, 2))  # everything up, random phase
                state = sup.state.services["victim"].primary.status.value
                if state != "up":
                    raise RuntimeError(f"{kind}: the primary is {state} before the fault")
                broke = time.monotonic()
                await victim.break_(mode)
                at = await asyncio.wait_for(decided, 30)
            finally:
                await sup.stop(grace=0.5)
    finally:
        await victim.stop()
    return at - broke


async def detection(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    modes = ["refused", "silent"] if args.mode == "both" else [args.mode]
    kinds = args.kinds.split(",")
    unknown = set(kinds) - set(DETECTION_KINDS)
    if unknown:
        raise SystemExit(f"unknown kinds: {', '.join(sorted(unknown))}")
    on = "on" if args.heartbeat else "off"
    if args.icmp_peer is None:
        print(
            f"detection: {args.runs} runs per kind and mode; defaults interval 2s, fast 0.25s, "
            f"timeout 1s, fall 3; watch {'on' if args.watch else 'off'}, heartbeat {on}",
            flush=True,
        )
    if "icmp" in kinds and args.icmp_peer is None:
        _detection_in_netns(args)
        kinds.remove("icmp")
    for kind in kinds:
        for mode in modes:
            times = []
            for i in range(args.runs):
                t = await one_detection(kind, mode, rng, args.watch, args.heartbeat, args.icmp_peer)
                times.append(t)
                if args.verbose:
                    print(f"  {kind} {mode} run {i + 1}/{args.runs}: {t:.3f}s", flush=True)
            print(
                f"{kind:12s} {mode:8s} heartbeat {on:3s}: median {statistics.median(times):.3f}s  "
                f"p95 {pct(times, 95):.3f}s  min {min(times):.3f}s  max {max(times):.3f}s  "
                f"(n={len(times)})",
                flush=True,
            )


def _detection_in_netns(args: argparse.Namespace) -> None:
    """icmp: this script again, in network namespace P; the target is Q
    across a veth pair (tests/test_probe_icmp.py's namespaces)."""
    from tests.test_probe_icmp import Namespaces

    ns = Namespaces()
    try:
        ns.setup()
        cmd = [
            *("ip", "netns", "exec", ns.p, sys.executable, str(Path(__file__).resolve())),
            *("detection", "--kinds", "icmp", "--icmp-peer", ns.q, "--runs", str(args.runs)),
            *("--mode", args.mode, "--seed", str(args.seed)),
            *([] if args.heartbeat else ["--no-heartbeat"]),
            *(["--verbose"] if args.verbose else []),
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        print(out.stdout.rstrip() or out.stderr[-2000:], flush=True)
    finally:
        ns.cleanup()


HEARTBEAT_CPU_KINDS = ("http", "thingsboard", "socketio", "frp", "stun", "turn", "icmp")


async def heartbeat_cpu(args: argparse.Namespace) -> None:
    """CPU of this process per target-second, heartbeats on and off, in one run."""
    from bench.peers import MEASURED_CPU, helper_cpus

    pinned = args.pin and len(os.sched_getaffinity(0)) > 1
    helpers = helper_cpus() if pinned else None
    if pinned:
        os.sched_setaffinity(0, {MEASURED_CPU})
    kinds = args.kinds.split(",")
    print(
        f"heartbeat CPU: {args.services} services per kind (primary and backup on the same "
        f"peer: {2 * args.services} targets), default thresholds and heartbeat; "
        f"{args.seconds:g} s measured per round after {args.warmup:g} s, {args.rounds} rounds",
        flush=True,
    )
    for kind in kinds:
        victim = Victim(kind)
        if kind == "icmp":
            victim.host = victim.backup = "127.0.0.1"  # the kernel answers on loopback
        else:
            if helpers is not None:
                # the peer's process on the other core
                os.sched_setaffinity(0, helpers)
            await victim.start()
            if pinned:
                os.sched_setaffinity(0, {MEASURED_CPU})
            victim.backup = victim.host
        figures: dict[bool, list[float]] = {True: [], False: []}
        sent: list[float] = []
        try:
            for r in range(args.rounds):
                for on in (True, False) if r % 2 == 0 else (False, True):
                    cpu, hb = await _cpu_round(victim, args, on)
                    figures[on].append(cpu)
                    if on:
                        sent.append(hb)
        finally:
            if kind != "icmp":
                await victim.stop()
        on_ms = statistics.median(figures[True])
        off_ms = statistics.median(figures[False])
        print(
            f"{kind:12s} CPU per target-second: heartbeat on {on_ms:.3f} ms, off {off_ms:.3f} ms, "
            f"on/off {on_ms / off_ms:.2f} (+{on_ms - off_ms:.3f} ms; "
            f"{statistics.median(sent):.1f} heartbeats/s per target)",
            flush=True,
        )


async def _cpu_round(victim: Victim, args: argparse.Namespace, on: bool) -> tuple[float, float]:
    n = args.services
    base = victim.service(True, on)
    services = {f"s{i}": base for i in range(n)}
    with tempfile.TemporaryDirectory() as tmp:
        sup = _supervisor(tmp, services)
        await sup.start()
        try:
            await asyncio.sleep(args.warmup)
            hbs = [t.heartbeat for t in sup.targets.values() if t.heartbeat is not None]
            sent0 = sum(h.sent for h in hbs)
            cpu0, wall0 = time.process_time(), time.monotonic()
            await asyncio.sleep(args.seconds)
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            sent = sum(h.sent for h in hbs) - sent0
            up = sum(
                1
                for s in sup.state.services.values()
                for t in (s.primary, s.backup)
                if t.status.value == "up"
            )
        finally:
            await sup.stop(grace=0.5)
    if up < 2 * n:
        print(f"  warning: {victim.kind}: {up} of {2 * n} targets up", flush=True)
    return 1e3 * cpu / (max(up, 1) * wall), sent / (max(up, 1) * wall)


async def scale(args: argparse.Namespace) -> None:
    from bench.peers import MEASURED_CPU, helper_cpus

    pinned = args.pin and len(os.sched_getaffinity(0)) > 1
    helpers = helper_cpus() if pinned else None
    if pinned:
        os.sched_setaffinity(0, {MEASURED_CPU})
    with _listeners(args.listeners, helpers) as lp:
        await _scale(args, lp.addresses)


async def _scale(args: argparse.Namespace, addrs: list[str]) -> None:
    services = _tcp_services(addrs, args.targets // 2)  # both roles probed
    lateness: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        sup = _supervisor(tmp, services, interval="1s", fast_interval="250ms", timeout="500ms")
        await sup.start()
        import gc

        gc.freeze()  # as `jupiterd run` does after starting the supervisor
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
        scrapes = 0
        if args.scrape:
            from types import SimpleNamespace

            from jupiterd.runtime.api import SUPERVISOR, _metrics

            # The daemon's own /metrics handler, minus the HTTP around it.
            request: Any = SimpleNamespace(app={SUPERVISOR: sup})
            end = wall0 + args.seconds
            while time.monotonic() + args.scrape <= end:
                await asyncio.sleep(args.scrape)
                await _metrics(request)
                scrapes += 1
            await asyncio.sleep(max(0.0, end - time.monotonic()))
        else:
            await asyncio.sleep(args.seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        probes = sum(t.loop.probes_run for t in sup.targets.values()) - probes0
        up = sum(1 for s in sup.state.services.values() if s.primary.status.value == "up")
        await sup.stop(grace=0.5)
    print(
        f"targets {len(services) * 2}: {probes / wall:.0f} probes/s, CPU {100 * cpu / wall:.1f}% "
        f"of one core ({1e3 * cpu / max(probes, 1):.3f} ms CPU per probe incl. scheduling"
        f"{f', {scrapes} /metrics renders' if args.scrape else ''})"
    )
    print(
        f"start lateness: p50 {1e3 * pct(lateness, 50):.1f} ms  p99 {1e3 * pct(lateness, 99):.1f} ms  "
        f"max {1e3 * max(lateness):.1f} ms  (n={len(lateness)})"
    )
    print(
        f"primaries up: {up}/{len(services)}; RSS {rss_mb():.1f} MB; "
        f"maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MB"
    )
    if args.json:
        print(
            "json "
            + json.dumps(
                {
                    "targets": len(services) * 2,
                    "probes_per_s": probes / wall,
                    "cpu_share": cpu / wall,
                    "p50": pct(lateness, 50),
                    "p99": pct(lateness, 99),
                    "max": max(lateness),
                    "up": up,
                    "services": len(services),
                    "rss_mb": rss_mb(),
                }
            ),
            flush=True,
        )


def scale_search(args: argparse.Namespace) -> None:
    """Fresh process per count: no state or heap carried from the last one."""
    print(
        f"scale search: 1 s interval, 500 ms timeout, tcp targets, p99 start lateness < 100 ms; "
        f"{args.seconds:g} s per count{f', /metrics rendered every {args.scrape:g} s' if args.scrape else ''}",
        flush=True,
    )
    best = 0
    n = args.start
    while n <= args.max:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "scale",
            "--targets",
            str(n),
            "--seconds",
            str(args.seconds),
            "--json",
            *(["--scrape", str(args.scrape)] if args.scrape else []),
            *([] if args.pin else ["--no-pin"]),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600).stdout
        line = next((x for x in out.splitlines() if x.startswith("json ")), None)
        if line is None:
            print(f"  {n}: no result\n{out}", flush=True)
            break
        r = json.loads(line[5:])
        ok = r["p99"] < 0.1 and r["up"] == r["services"]
        print(
            f"  {n:6d} targets: {r['probes_per_s']:6.0f} probes/s, CPU {100 * r['cpu_share']:5.1f}%, "
            f"lateness p50 {1e3 * r['p50']:.1f} ms p99 {1e3 * r['p99']:.1f} ms max {1e3 * r['max']:.0f} ms, "
            f"RSS {r['rss_mb']:.0f} MB {'ok' if ok else 'MISSED'}",
            flush=True,
        )
        if not ok:
            break
        best = n
        n += args.step
    print(
        f"most targets with p99 start lateness < 100 ms: {best}"
        + (" (search cap reached)" if n > args.max else "")
    )


def example_on_loopback() -> dict[str, Any]:
    """config/jupiter.example.yaml with every instance address rewritten to
    127.0.3.x; refuses to return a document with any other IPv4 address."""
    import ipaddress
    import re

    import yaml

    doc = yaml.safe_load((ROOT / "config" / "jupiter.example.yaml").read_text())
    for i, svc in enumerate(doc["services"].values()):
        svc["primary"]["address"] = f"127.0.3.{2 * i + 1}"
        svc["backup"]["address"] = f"127.0.3.{2 * i + 2}"
    for found in re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", json.dumps(doc)):
        if not ipaddress.ip_address(found).is_loopback:
            raise SystemExit(f"refusing to run: {found} is left in the example configuration")
    for var in ("JUPITERD_TURN_SECRET", "JUPITERD_FRP_TOKEN", "JUPITERD_TB_PASSWORD"):
        os.environ.setdefault(var, "x")
    return doc


async def memory(args: argparse.Namespace) -> None:
    doc = example_on_loopback()
    if args.process:
        memory_process(args, doc)
        return
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


def memory_process(args: argparse.Namespace, doc: dict[str, Any]) -> None:
    """`jupiterd run` as a process: the AWS client included, its endpoint a
    closed loopback port (calls fail fast; nothing leaves the machine)."""
    from bench.peers import Daemon, free_port, total
    from bench.peers import rss_mb as rss_of

    doc["aws"] = {**doc.get("aws", {}), "endpoint_url": f"http://127.0.0.1:{free_port()}"}
    with Daemon({}, doc=doc) as d:
        ready = d.wait_ready(60)
        time.sleep(args.seconds)
        if d.proc is not None and d.proc.poll() is not None:
            raise SystemExit(f"jupiterd died:\n{d.log_tail()}")
        rss = rss_of(d.pid)
        probes = total(d.metrics(), "jupiterd_probe_results_total")
    print(
        f"memory: `jupiterd run` with the full example config (addresses on loopback, AWS "
        f"endpoint a closed loopback port): RSS {rss:.1f} MB after {args.seconds:g} s; "
        f"/healthz after {ready:.2f} s; {probes:.0f} probes run"
    )


async def exposition(args: argparse.Namespace) -> None:
    from prometheus_client import disable_created_metrics, enable_created_metrics, generate_latest

    from bench.peers import MEASURED_CPU, helper_cpus

    pinned = args.pin and len(os.sched_getaffinity(0)) > 1
    if pinned:
        os.sched_setaffinity(0, {MEASURED_CPU})
    with (
        _listeners(8, helper_cpus() if pinned else None) as lp,
        tempfile.TemporaryDirectory() as tmp,
    ):
        sup = _supervisor(
            tmp, _tcp_services(lp.addresses, args.targets // 2), interval="1s", timeout="500ms"
        )
        await sup.start()
        print(
            f"exposition: {len(sup.targets)} tcp targets probed at 1 s; warming up {args.warmup:g} s",
            flush=True,
        )
        await asyncio.sleep(args.warmup)
        modes = {"with _created": enable_created_metrics, "without": disable_created_metrics}
        cpu: dict[str, list[float]] = {label: [] for label in modes}
        bodies: dict[str, bytes] = {}

        def render() -> tuple[bytes, float]:
            c0 = time.thread_time()
            body = generate_latest(sup.metrics.registry)
            return body, time.thread_time() - c0

        for i in range(args.renders):  # interleaved, alternating which goes first
            for label in sorted(modes, reverse=bool(i % 2)):
                modes[label]()
                bodies[label], c = await asyncio.to_thread(render)
                cpu[label].append(c)
        rows = {}
        for label, body in bodies.items():
            series = sum(1 for ln in body.splitlines() if ln and not ln.startswith(b"#"))
            rows[label] = (len(body), series, statistics.median(cpu[label]))
            print(
                f"  {label:14s} {len(body) / 1e6:6.2f} MB  {series:7d} series  "
                f"render CPU median {1e3 * rows[label][2]:6.0f} ms (n={len(cpu[label])})",
                flush=True,
            )
        disable_created_metrics()
        await sup.stop(grace=0.5)
    (b0, s0, c0), (b1, s1, c1) = rows["with _created"], rows["without"]
    print(
        f"without/with: size {b1 / b0:.2f}, series {s1 / s0:.2f}, render CPU {c1 / c0:.2f}; "
        f"per target without: {b1 / len(sup.targets):.0f} bytes, {s1 / len(sup.targets):.1f} series"
    )


def _tcp_services(addrs: list[str], n: int) -> dict[str, Any]:
    from bench.peers import services_for

    return services_for("tcp", addrs, n)


def growth(args: argparse.Namespace) -> None:
    from bench.peers import MEASURED_CPU, Daemon, helper_cpus, rss_mb

    pinned = args.pin and len(os.sched_getaffinity(0)) > 1
    helpers = helper_cpus() if pinned else None
    if helpers:
        os.sched_setaffinity(0, helpers)
    with _listeners(args.listeners, helpers) as lp:
        services = _tcp_services(lp.addresses, args.targets)
        defaults = {"interval": "1s", "timeout": "500ms"}
        with Daemon(services, cpus={MEASURED_CPU} if pinned else None, defaults=defaults) as d:
            d.wait_ready(60)
            start = rss_mb(d.pid)
            t0 = time.monotonic()
            end = t0 + 60 * args.minutes
            samples: list[tuple[float, float]] = []
            print(
                f"growth: jupiterd run, {args.targets} tcp targets at 1 s, {args.minutes:g} min, "
                f"RSS every {args.sample:g} s; RSS at start (first /healthz) {start:.1f} MB",
                flush=True,
            )
            scrape_at = t0 + args.scrape if args.scrape else None
            while time.monotonic() < end:
                time.sleep(min(args.sample, max(0.0, end - time.monotonic())))
                now = time.monotonic()
                if scrape_at is not None and now >= scrape_at:
                    d.get("/metrics", timeout=30)  # as Prometheus would
                    scrape_at += args.scrape
                if d.proc is not None and d.proc.poll() is not None:
                    raise SystemExit(f"jupiterd died:\n{d.log_tail()}")
                samples.append((now - t0, rss_mb(d.pid)))
                if args.verbose or len(samples) % max(1, round(60 / args.sample)) == 0:
                    print(f"  t={now - t0:7.0f} s  RSS {samples[-1][1]:.1f} MB", flush=True)
    xs = [t for t, _ in samples]
    ys = [r for _, r in samples]
    half = [(t, r) for t, r in samples if t >= xs[-1] / 2]
    slope = _slope(half) * 3600
    warm = next((r for t, r in samples if t >= args.warmup), ys[0])
    after = [(t, r) for t, r in samples if t >= args.warmup]
    third = max(1, len(after) // 3)
    first_third = statistics.median(r for _, r in after[:third])
    last_third = statistics.median(r for _, r in after[-third:])
    print(
        f"RSS median over the first third after the warm-up {first_third:.1f} MB, over the last "
        f"third {last_third:.1f} MB (change {last_third - first_third:+.1f} MB)"
    )
    print(
        f"RSS: start {start:.1f} MB, after {args.warmup:g} s {warm:.1f} MB, end {ys[-1]:.1f} MB, "
        f"min {min(ys):.1f}, max {max(ys):.1f} MB; second half slope {slope:+.2f} MB/hour "
        f"(n={len(samples)})"
    )


def _slope(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    mx = statistics.fmean(t for t, _ in points)
    my = statistics.fmean(r for _, r in points)
    den = sum((t - mx) ** 2 for t, _ in points)
    return sum((t - mx) * (r - my) for t, r in points) / den if den else 0.0


def startup(args: argparse.Namespace) -> None:
    """exec -> /healthz, and exec -> the first probe accepted by a listener here."""
    import select
    import socket

    from bench.peers import Daemon, daemon_config, free_port

    ready_times, first_times = [], []
    aws = (
        "AWS enabled, its endpoint a closed loopback port, "
        + (
            "a new state directory each run (nothing kept from the last start)"
            if args.cold
            else "one state directory for all runs (run 1 starts with it empty)"
        )
        if args.aws
        else "monitor only"
    )
    print(
        f"startup: jupiterd run with {args.services} tcp service(s) (default thresholds: "
        f"interval 2 s), {aws}, {args.runs} runs",
        flush=True,
    )
    state = tempfile.TemporaryDirectory(prefix="jupiterd-bench-state-")
    for i in range(args.runs):
        lsock = socket.socket()
        lsock.bind(("127.0.5.1", 0))
        lsock.listen(1024)
        addr = f"127.0.5.1:{lsock.getsockname()[1]}"
        first = healthz = float("nan")
        services = _tcp_services([addr], args.services)
        if args.aws and args.cold:
            state.cleanup()
            state = tempfile.TemporaryDirectory(prefix="jupiterd-bench-state-")
        if args.aws:
            doc = daemon_config(services, state.name, 0)
            doc["aws"] = {"enabled": True, "endpoint_url": f"http://127.0.0.1:{free_port()}"}
            d = Daemon(services, doc=doc, state_dir=state.name)
        else:
            d = Daemon(services)
        try:
            d.start()
            deadline = d.exec_at + 30
            while (first != first or healthz != healthz) and time.monotonic() < deadline:
                if first != first:
                    ready, _, _ = select.select([lsock], [], [], 0.002)
                    if ready:
                        first = time.monotonic() - d.exec_at
                if healthz != healthz:
                    try:
                        d.get("/healthz", 0.5)
                        healthz = time.monotonic() - d.exec_at
                    except OSError:
                        pass
        finally:
            d.stop()
            lsock.close()
        ready_times.append(healthz)
        first_times.append(first)
        print(f"  run {i + 1}: first probe {first:.3f} s, /healthz {healthz:.3f} s", flush=True)
    state.cleanup()
    print(
        f"exec -> first probe: median {statistics.median(first_times):.3f} s, "
        f"max {max(first_times):.3f} s; exec -> /healthz: median "
        f"{statistics.median(ready_times):.3f} s, max {max(ready_times):.3f} s"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("detection")
    d.add_argument("--runs", type=int, default=10)
    d.add_argument("--mode", choices=["refused", "silent", "both"], default="both")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--kinds", default=",".join(DETECTION_KINDS))
    d.add_argument(
        "--no-watch",
        dest="watch",
        action="store_false",
        help="no idle watch connection: periodic probes only",
    )
    d.add_argument(
        "--no-heartbeat", dest="heartbeat", action="store_false", help="probe.heartbeat: false"
    )
    d.add_argument("--verbose", action="store_true", help="print every run")
    d.add_argument("--icmp-peer", default=None, help=argparse.SUPPRESS)  # inside the namespace
    hc = sub.add_parser("heartbeat-cpu")
    hc.add_argument("--kinds", default=",".join(HEARTBEAT_CPU_KINDS))
    hc.add_argument("--services", type=int, default=20)
    hc.add_argument("--seconds", type=float, default=10)
    hc.add_argument("--warmup", type=float, default=5)
    hc.add_argument("--rounds", type=int, default=2)
    hc.add_argument("--no-pin", dest="pin", action="store_false")
    s = sub.add_parser("scale")
    s.add_argument("--targets", type=int, default=1000)
    s.add_argument("--listeners", type=int, default=8)
    s.add_argument("--seconds", type=float, default=30)
    s.add_argument("--warmup", type=float, default=3)
    s.add_argument("--scrape", type=float, default=0, help="render /metrics every S seconds")
    s.add_argument("--json", action="store_true", help="also print one machine-readable line")
    s.add_argument("--no-pin", dest="pin", action="store_false")
    ss = sub.add_parser("scale-search")
    ss.add_argument("--start", type=int, default=1000)
    ss.add_argument("--step", type=int, default=1000)
    ss.add_argument("--max", type=int, default=20000)
    ss.add_argument("--seconds", type=float, default=15)
    ss.add_argument("--scrape", type=float, default=0, help="render /metrics every S seconds")
    ss.add_argument("--no-pin", dest="pin", action="store_false")
    m = sub.add_parser("memory")
    m.add_argument("--seconds", type=float, default=5)
    m.add_argument(
        "--process", action="store_true", help="`jupiterd run` as a process, AWS client included"
    )
    e = sub.add_parser("exposition")
    e.add_argument("--targets", type=int, default=2000)
    e.add_argument("--warmup", type=float, default=5)
    e.add_argument("--renders", type=int, default=5)
    e.add_argument("--no-pin", dest="pin", action="store_false")
    g = sub.add_parser("growth")
    g.add_argument("--targets", type=int, default=2000)
    g.add_argument("--listeners", type=int, default=8)
    g.add_argument("--minutes", type=float, default=1)
    g.add_argument("--sample", type=float, default=10)
    g.add_argument("--warmup", type=float, default=30)
    g.add_argument("--scrape", type=float, default=15, help="GET /metrics every S s (0: never)")
    g.add_argument("--verbose", action="store_true")
    g.add_argument("--no-pin", dest="pin", action="store_false")
    st = sub.add_parser("startup")
    st.add_argument("--runs", type=int, default=5)
    st.add_argument("--services", type=int, default=5)
    st.add_argument(
        "--aws",
        action="store_true",
        help="AWS enabled (a closed loopback endpoint): the client and its models load",
    )
    st.add_argument(
        "--cold", action="store_true", help="with --aws: a new state directory each run"
    )
    args = p.parse_args()
    if args.cmd == "scale-search":
        scale_search(args)
        return
    if args.cmd in ("growth", "startup"):
        {"growth": growth, "startup": startup}[args.cmd](args)
        return
    logs.configure("error", "json", stream=open(os.devnull, "w"))  # noqa: SIM115
    commands = {
        "detection": detection,
        "heartbeat-cpu": heartbeat_cpu,
        "scale": scale,
        "memory": memory,
        "exposition": exposition,
    }
    asyncio.run(commands[args.cmd](args))


if __name__ == "__main__":
    main()
