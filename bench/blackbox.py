#!/usr/bin/env python3
"""jupiterd vs prometheus-blackbox-exporter: CPU per probe and latency overhead.

    python bench/blackbox.py [--rate 500] [--seconds 20] [--rounds 1] [--kinds tcp,http]
                             [--other-rate 100] [--others socketio,stun,frp] [--no-pin]

The same loopback targets (``--listeners`` TCP or HTTP listeners in their own
process, ``rate`` targets in all), the same probe rate, in one run:

- jupiterd: ``jupiterd run`` as a process with a generated, loopback-only,
  monitor-only configuration (``aws.enabled: false``: no AWS calls at all;
  isolation guard off) of ``rate`` services at a 1 s interval, 1 s timeout,
  default jitter and watch. Probes counted from its own /metrics.
- blackbox_exporter: ``prometheus-blackbox-exporter`` with its own config
  (``tcp_connect``, ``http_2xx``, 1 s timeout), driven through ``/probe`` by a
  separate driver process at ``rate`` requests per second, round robin over
  the same targets (the driver's CPU is not blackbox's).

CPU: utime+stime of the measured process from /proc/<pid>/stat over the same
window (after a warm-up), as CPU seconds per 10,000 probes; the ratio is
jupiterd / blackbox. Latency overhead: each tool's mean reported probe
duration (jupiterd's ``jupiterd_probe_duration_seconds``, blackbox's
``probe_duration_seconds``) minus the mean of a bare exchange with the same
targets from this process (a blocking connect; for http, connect + request +
response), measured in the same round. Also blackbox's whole /probe round trip
as its driver sees it.

With two or more cores, the measured process is pinned to core 0 and every
load generator to the others. Rounds alternate which tool goes first.

``--others``: the kinds blackbox_exporter cannot probe at all (Socket.IO,
STUN, frp), through the same daemon process against real or stand-in peers
(the Node Socket.IO 4 server, coturn, the frps stand-in), at ``--other-rate``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.peers import pct

BLACKBOX = "prometheus-blackbox-exporter"
MODULES = {"tcp": "tcp_connect", "http": "http_2xx"}
BLACKBOX_CONFIG = """\
modules:
  tcp_connect:
    prober: tcp
    timeout: 1s
    tcp:
      preferred_ip_protocol: ip4
  http_2xx:
    prober: http
    timeout: 1s
    http:
      preferred_ip_protocol: ip4
"""
TOKEN = "bench-token"

SETTLE = 2.0
SCRAPES = 3
SCRAPE_INTERVAL = 15.0  # a common Prometheus scrape_interval


# --------------------------------------------------------------------------- driver


async def drive(args: argparse.Namespace) -> None:
    """Runs in its own process: GET /probe at a fixed rate, round robin."""
    import aiohttp

    targets = args.targets.split(",")
    start, w0, w1, end = args.start, args.w0, args.w1, args.end
    rows: list[tuple[float, float, bool, float, float]] = []  # planned, lag, ok, dur, rtt
    errors: dict[str, int] = {}
    conn = aiohttp.TCPConnector(limit=256, force_close=False)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:

        async def one(target: str, planned: float) -> None:
            sent = time.monotonic()
            try:
                async with session.get(
                    args.url, params={"module": args.module, "target": target}
                ) as r:
                    body = await r.text()
            except Exception as exc:  # a benchmark counts failures, it does not stop
                key = type(exc).__name__
                errors[key] = errors.get(key, 0) + 1
                return
            rtt = time.monotonic() - sent
            ok, dur = False, float("nan")
            for line in body.splitlines():
                if line.startswith("probe_success "):
                    ok = line.split()[1] == "1"
                elif line.startswith("probe_duration_seconds "):
                    dur = float(line.split()[1])
            rows.append((planned, sent - planned, ok, dur, rtt))

        tasks: set[asyncio.Task[None]] = set()
        i = 0
        n = len(targets)
        step = 1.0 / args.rate
        while True:
            planned = start + i * step
            if planned >= end:
                break
            delay = planned - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # Everything due by now goes out in one go: no drift if a wake-up is late.
            now = time.monotonic()
            while planned <= now and planned < end:
                t = asyncio.create_task(one(targets[i % n], planned))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                i += 1
                planned = start + i * step
        if tasks:
            await asyncio.wait(tasks, timeout=6)
    win = [r for r in rows if w0 <= r[0] < w1]
    durs = [r[3] for r in win if r[2]]
    out = {
        "sent": i,
        "window": len(win),
        "ok": sum(1 for r in win if r[2]),
        "dur_mean": statistics.fmean(durs) if durs else None,
        "dur_p50": pct(durs, 50),
        "dur_p99": pct(durs, 99),
        "rtt_mean": statistics.fmean(r[4] for r in win) if win else None,
        "rtt_p99": pct([r[4] for r in win], 99),
        "lag_p99": pct([r[1] for r in win], 99),
        "errors": errors,
    }
    print(json.dumps(out), flush=True)


# --------------------------------------------------------------------------- measuring


def bare(kind: str, addrs: list[str], n: int = 2000) -> float:
    """Mean seconds of a bare exchange with the targets, from this process."""
    times = []
    for i in range(n):
        host, port = addrs[i % len(addrs)].rsplit(":", 1)
        s = socket.socket()
        try:
            t0 = time.perf_counter()
            s.connect((host, int(port)))
            if kind == "http":
                s.sendall(f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
                while s.recv(4096):
                    pass
            times.append(time.perf_counter() - t0)
        finally:
            s.close()
    return statistics.fmean(times)


def run_jupiterd(
    kind: str,
    addrs: list[str],
    count: int,
    args: argparse.Namespace,
    options: Any = None,
    listeners: Any = None,
) -> dict[str, Any]:
    """Probes are counted where they land (``listeners``) when there are
    listeners, else from the daemon's own counters; /metrics is never
    scraped inside the CPU window (a scrape's cost is measured apart)."""
    from bench.peers import Daemon, cpu_seconds, served, services_for, total

    services = services_for(kind, addrs, count, options)
    defaults = {"interval": "1s", "timeout": "1s"}
    with Daemon(services, cpus=args.measured_cpus, defaults=defaults) as d:
        d.wait_ready()
        if listeners is not None:
            time.sleep(max(0.0, args.warmup - SETTLE))
            m0 = d.metrics()
            time.sleep(SETTLE)  # the probes a scrape delayed catch up first
            s0 = served(listeners)
        else:
            # Counted by the daemon: its counters are read just outside the window.
            time.sleep(args.warmup)
            m0 = d.metrics()
            s0 = 0
        c0, t0 = cpu_seconds(d.pid), time.monotonic()
        time.sleep(args.seconds)
        c1, t1 = cpu_seconds(d.pid), time.monotonic()
        s1 = served(listeners) if listeners is not None else 0
        m1 = d.metrics()
        # What one /metrics scrape costs the daemon, to amortise over an interval.
        k0 = cpu_seconds(d.pid)
        for _ in range(SCRAPES):
            d.get("/metrics")
        scrape_cpu = (cpu_seconds(d.pid) - k0) / SCRAPES
        if d.proc is not None and d.proc.poll() is not None:
            raise RuntimeError(f"jupiterd died:\n{d.log_tail()}")

    def delta(name: str, **match: str) -> float:
        return total(m1, name, **match) - total(m0, name, **match)

    results = delta("jupiterd_probe_results_total")
    ok = delta("jupiterd_probe_results_total", reason="ok")
    dsum = delta("jupiterd_probe_duration_seconds_sum")
    dcount = delta("jupiterd_probe_duration_seconds_count")
    late_all = delta("jupiterd_probe_start_lateness_seconds_count")
    late_ok = delta("jupiterd_probe_start_lateness_seconds_bucket", le="0.1")
    return {
        "cpu": c1 - c0,
        "wall": t1 - t0,
        "probes": s1 - s0 if listeners is not None else results,
        "ok": ok,
        "failed": results - ok,
        "dur_mean": dsum / dcount if dcount else float("nan"),
        "late_share_over_100ms": 1 - late_ok / late_all if late_all else float("nan"),
        "scrape_cpu": scrape_cpu,
    }


def run_blackbox(
    kind: str, addrs: list[str], args: argparse.Namespace, listeners: Any
) -> dict[str, Any]:
    from bench.peers import cpu_seconds, free_port, helper_cpus, served, taskset

    with tempfile.TemporaryDirectory(prefix="blackbox-bench-") as tmp:
        cfg = Path(tmp) / "blackbox.yml"
        cfg.write_text(BLACKBOX_CONFIG)
        port = free_port()
        cmd = [
            BLACKBOX,
            f"--config.file={cfg}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
        cmd = taskset(cmd, args.measured_cpus)
        bb = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            _wait_http(f"http://127.0.0.1:{port}/-/healthy", bb)
            start = time.monotonic() + 1.0  # the driver imports aiohttp meanwhile
            w0 = start + args.warmup
            w1 = w0 + args.seconds
            end = w1 + 0.5
            dcmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "drive",
                "--url",
                f"http://127.0.0.1:{port}/probe",
                "--module",
                MODULES[kind],
                "--targets",
                ",".join(addrs[i % len(addrs)] for i in range(args.rate)),
                "--rate",
                str(args.rate),
                *("--start", repr(start), "--w0", repr(w0), "--w1", repr(w1), "--end", repr(end)),
            ]
            dcmd = taskset(dcmd, None if args.measured_cpus is None else helper_cpus())
            driver = subprocess.Popen(dcmd, stdout=subprocess.PIPE, text=True)
            _sleep_until(w0)
            s0 = served(listeners)
            c0, t0 = cpu_seconds(bb.pid), time.monotonic()
            _sleep_until(w1)
            c1, t1 = cpu_seconds(bb.pid), time.monotonic()
            s1 = served(listeners)
            out, _ = driver.communicate(timeout=60)
            res = json.loads(out.strip().splitlines()[-1])
        finally:
            bb.terminate()
            bb.wait(10)
    failed = res["window"] - res["ok"] + sum(res["errors"].values())
    res.update({"cpu": c1 - c0, "wall": t1 - t0, "probes": s1 - s0, "failed": failed})
    return res


def _sleep_until(t: float) -> None:
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)


def _wait_http(url: str, proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{BLACKBOX} exited {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def per10k(r: dict[str, Any]) -> float:
    return 1e4 * r["cpu"] / r["probes"] if r["probes"] else float("nan")


def ms(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{1e3 * v:.3f}"


# --------------------------------------------------------------------------- main


def compare(args: argparse.Namespace) -> None:
    from bench.peers import bench_script, helper_cpus, peer_process

    ratios: dict[str, list[float]] = {}
    for rnd in range(args.rounds):
        for kind in args.kinds.split(","):
            listen = [str(args.listeners)] + (["--http"] if kind == "http" else [])
            net = "127.0.4" if kind == "http" else "127.0.2"
            with peer_process(
                bench_script("listeners.py", *listen, "--net", net),
                cpus=helper_cpus() if args.measured_cpus else None,
            ) as lp:
                addrs = lp.addresses
                order = ["jupiterd", "blackbox"] if rnd % 2 == 0 else ["blackbox", "jupiterd"]
                res: dict[str, dict[str, Any]] = {}
                for tool in order:
                    if tool == "jupiterd":
                        res[tool] = run_jupiterd(kind, addrs, args.rate, args, listeners=lp)
                    else:
                        res[tool] = run_blackbox(kind, addrs, args, lp)
                base = bare(kind, addrs)
            j, b = res["jupiterd"], res["blackbox"]
            ratio = per10k(j) / per10k(b)
            ratios.setdefault(kind, []).append(ratio)
            print(
                f"round {rnd + 1} {kind}: {args.rate} targets/probes per s, {args.seconds:g} s window",
                flush=True,
            )
            for tool, r in (("jupiterd", j), ("blackbox", b)):
                extra = (
                    f"; start lateness > 100 ms: {100 * r['late_share_over_100ms']:.2f}%"
                    if tool == "jupiterd"
                    else f"; /probe round trip {ms(r['rtt_mean'])} ms (p99 {ms(r['rtt_p99'])}); "
                    f"driver lag p99 {ms(r['lag_p99'])} ms; errors {r['errors'] or 0}"
                )
                print(
                    f"  {tool:9} {r['probes']:7.0f} probes ({r['failed']:.0f} failed) in {r['wall']:.1f} s, "
                    f"CPU {r['cpu']:.2f} s = {per10k(r):.2f} CPU s per 10k probes; "
                    f"mean probe {ms(r['dur_mean'])} ms, overhead {ms(r['dur_mean'] - base)} ms"
                    f"{extra}",
                    flush=True,
                )
            scrape = 1e4 * j["scrape_cpu"] / (args.rate * SCRAPE_INTERVAL)
            print(
                f"  one /metrics scrape costs jupiterd {1e3 * j['scrape_cpu']:.0f} ms CPU: "
                f"+{scrape:.2f} CPU s per 10k probes at a {SCRAPE_INTERVAL:g} s scrape interval\n"
                f"  bare {'connect' if kind == 'tcp' else 'connect+GET'} from Python: {ms(base)} ms; "
                f"CPU ratio jupiterd/blackbox = {ratio:.2f}",
                flush=True,
            )
    for kind, rs in ratios.items():
        spread = f" (min {min(rs):.2f}, max {max(rs):.2f}, n={len(rs)})" if len(rs) > 1 else ""
        print(
            f"{kind}: CPU per probe, jupiterd/blackbox median {statistics.median(rs):.2f}{spread}"
        )


def others(args: argparse.Namespace) -> None:
    """Daemon CPU per probe for the kinds blackbox_exporter has no prober for."""
    import contextlib

    from bench.peers import helper_cpus, node_sio, spawn
    from tests.peers.commands import python_peer

    cpus = helper_cpus() if args.measured_cpus else None
    kinds = [k for k in args.others.split(",") if k]
    print(f"kinds blackbox_exporter cannot probe: {args.other_rate} probes/s through jupiterd run")
    for kind in kinds:
        with contextlib.ExitStack() as stack:
            opts: dict[str, Any] | None = None
            if kind == "socketio":
                addr = stack.enter_context(
                    spawn(node_sio("--major", "4", "--host", "127.0.0.1", "--port", "0"), cpus=cpus)
                )
            elif kind == "stun":
                from jupiterd.sandbox.peers.coturn import free_port_pair

                port = free_port_pair("127.0.0.1")
                addr = stack.enter_context(
                    spawn(
                        python_peer(
                            "coturn.py", "--host", "127.0.0.1", "--port", str(port), "--user", "u:p"
                        ),
                        cpus=cpus,
                    )
                )
            elif kind == "frp":
                addr = stack.enter_context(
                    spawn(
                        python_peer(
                            "frps_standin.py",
                            "--host",
                            "127.0.0.1",
                            "--port",
                            "0",
                            "--token",
                            TOKEN,
                        ),
                        cpus=cpus,
                    )
                )
                opts = {"token": TOKEN}
            else:
                raise SystemExit(f"unknown kind {kind}")
            r = run_jupiterd(kind, addr.split()[:1], args.other_rate, args, opts)
        print(
            f"  {kind:9} {r['probes']:7.0f} probes ({r['failed']:.0f} failed) in {r['wall']:.1f} s, "
            f"CPU {r['cpu']:.2f} s = {per10k(r):.2f} CPU s per 10k probes; "
            f"mean probe {ms(r['dur_mean'])} ms",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd")
    d = sub.add_parser("drive", help="internal: the blackbox_exporter driver process")
    d.add_argument("--url", required=True)
    d.add_argument("--module", required=True)
    d.add_argument("--targets", required=True)
    d.add_argument("--rate", type=float, required=True)
    for t in ("start", "w0", "w1", "end"):
        d.add_argument(f"--{t}", type=float, required=True)
    p.add_argument("--rate", type=int, default=500, help="probes per second (= targets at 1 s)")
    p.add_argument("--seconds", type=float, default=20, help="measured window per tool")
    p.add_argument("--warmup", type=float, default=5)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--kinds", default="tcp,http")
    p.add_argument("--listeners", type=int, default=16)
    p.add_argument("--others", default="socketio,stun,frp")
    p.add_argument("--other-rate", type=int, default=100)
    p.add_argument("--no-pin", dest="pin", action="store_false")
    args = p.parse_args()
    if args.cmd == "drive":
        asyncio.run(drive(args))
        return
    from bench.peers import MEASURED_CPU, helper_cpus

    if args.pin and len(os.sched_getaffinity(0)) > 1:
        args.measured_cpus = {MEASURED_CPU}
        os.sched_setaffinity(0, helper_cpus())
    else:
        args.measured_cpus = None
    print(
        f"{os.cpu_count()} cores; measured process "
        f"{'pinned to core ' + str(MEASURED_CPU) if args.measured_cpus else 'not pinned'}",
        flush=True,
    )
    if args.kinds:
        compare(args)
    if args.others:
        others(args)


if __name__ == "__main__":
    main()
