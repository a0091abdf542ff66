#!/usr/bin/env python3
"""False DOWN under real packet loss made by the kernel (run as root).

    python bench/loss_kernel.py [--minutes 10] [--loss 0.1] [--copies 2] [--kinds ...]

The peers run in a network namespace this script creates
(tests/peers/netns.py): the ThingsBoard stand-in (tcp, http, thingsboard),
the Node Socket.IO 4 server (socketio), coturn with a REST secret (stun,
turn: allocate and release), the frps stand-in (frp), and the namespace
itself (icmp). ``iptables -m statistic --mode random --probability LOSS -j
DROP`` on the namespace's INPUT and OUTPUT drops LOSS of the packets each
way (1-(1-LOSS)^2 per round trip), TCP and its handshakes included, as on a
real path. ``jupiterd run`` (monitor only, loopback API) probes ``--copies``
services per kind across a veth pair with the **default thresholds and
options** (interval 2 s, fast interval 0.25 s, timeout 1 s, fall 3, rise 2).

At the end of the window: per kind, probes, failed probes by reason, SUSPECT
and DOWN transitions (the goal is zero DOWN). Then every peer is killed at
once (SIGKILL; for icmp the namespace stops answering echoes, a silent
host) and the time from the kill to each service's DOWN is reported, still
under the same loss.
"""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.lossy import _events, run_window, tallies
from bench.peers import Daemon
from tests.peers.netns import KINDS, LossyNamespace, kind_peers


def service_probe(kind: str, target: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The address and the config ``probe`` block for a kind_peers target."""
    probe: dict[str, Any] = {"kind": kind}
    rest = target.split("://", 1)[-1]
    if kind == "icmp":
        host = rest
    else:
        hostport, _, path = rest.partition("/")
        host, port = hostport.rsplit(":", 1)
        probe["port"] = int(port)
        if path:
            options = {"path": "/" + path, **options}
    if options:
        probe["options"] = options
    return host, probe


def _stamp(e: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()


def run(args: argparse.Namespace) -> None:
    kinds = [k for k in KINDS if k in args.kinds.split(",")]
    with LossyNamespace(args.loss) as ns, kind_peers(ns) as peers:
        services: dict[str, Any] = {}
        for kind in kinds:
            target, options, _ = peers[kind]
            host, probe = service_probe(kind, target, options)
            for i in range(args.copies):
                services[f"{kind}-{i}"] = {
                    "probe": probe,
                    "primary": {"address": host},
                    "backup": {"address": host},
                }
        print(
            f"loss_kernel: {len(services)} services ({', '.join(kinds)} x{args.copies}), "
            f"default thresholds and options, {args.minutes:g} min; iptables statistic "
            f"drops {100 * args.loss:g}% each way in namespace {ns.name}",
            flush=True,
        )
        with Daemon(services) as d:
            d.wait_ready()
            run_window(d, args.minutes)
            m = d.metrics()
            events = _events(d)
            dropped = ns.dropped()
            report(kinds, m, events, dropped)
            if args.kill:
                kill_and_time(args, ns, peers, kinds, d, len(events))


def report(
    kinds: list[str], m: dict[str, float], events: list[dict[str, Any]], dropped: dict[str, int]
) -> None:
    by_kind, trans = tallies(m, events)
    print(
        f"{'kind':12} {'probes':>7} {'failed':>7} {'share':>7}  {'SUSPECT':>7} {'DOWN':>5}  "
        "failures by reason"
    )
    for kind in kinds:
        c = by_kind[kind]
        n = sum(c.values())
        failed = n - c["ok"]
        share = 100 * failed / n if n else 0.0
        reasons = ", ".join(f"{r} {v}" for r, v in c.most_common() if r != "ok") or "-"
        print(
            f"{kind:12} {n:7d} {failed:7d} {share:6.2f}%  {trans[kind]['suspect']:7d} "
            f"{trans[kind]['down']:5d}  {reasons}"
        )
    downs = [e for e in events if e.get("new") == "down"]
    print(f"DOWN decisions: {len(downs)} (goal 0)")
    for e in downs[:20]:
        print(f"  {e['service']}: {e.get('reason', '')}")
    details = Counter(
        (e["service"].rsplit("-", 1)[0], str(e.get("reason", ""))[:160])
        for e in events
        if e.get("new") == "suspect"
    )
    for (kind, why), n in details.most_common(12):
        print(f"  suspect x{n} {kind}: {why}")
    print(f"packets dropped by the loss rules: {json.dumps(dropped)}")


def kill_and_time(
    args: argparse.Namespace,
    ns: LossyNamespace,
    peers: dict[str, Any],
    kinds: list[str],
    d: Daemon,
    seen: int,
) -> None:
    """Kill every peer at once; time each service's DOWN."""
    killed = time.time()
    for p in {id(p): p for _, _, p in peers.values() if p is not None}.values():
        p.crash()
    subprocess.run(
        ns.wrap(["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1"]), check=True, timeout=20
    )
    want = {f"{k}-{i}" for k in kinds for i in range(args.copies)}
    down: dict[str, float] = {}
    end = time.monotonic() + 20
    while time.monotonic() < end and len(down) < len(want):
        time.sleep(0.2)
        for e in _events(d)[seen:]:
            if e.get("new") == "down" and e.get("service") in want:
                down.setdefault(e["service"], _stamp(e) - killed)
    print("killed every peer under the same loss (icmp: echoes ignored, a silent host):")
    for kind in kinds:
        times = [down[s] for s in sorted(want) if s.rsplit("-", 1)[0] == kind and s in down]
        missing = args.copies - len(times)
        shown = ", ".join(f"{t:.2f}" for t in times) or "-"
        extra = f", {missing} not DOWN within 20 s" if missing else ""
        med = f"median {statistics.median(times):.2f} s" if times else ""
        print(f"  {kind:12} DOWN after {shown} s {med}{extra}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--loss", type=float, default=0.1, help="share of packets lost each way")
    p.add_argument("--copies", type=int, default=2, help="services per kind")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--no-kill", dest="kill", action="store_false", help="skip the kill phase")
    args = p.parse_args()
    # Stopped early (also when started in the background, where SIGINT is
    # ignored): unwind, so the peers, the daemon and the namespace go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run(args)


if __name__ == "__main__":
    main()
