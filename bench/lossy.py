#!/usr/bin/env python3
"""False positives under packet loss: a lossy proxy in front of real peers.

    python bench/lossy.py run [--minutes 1] [--loss 0.1] [--tcp-loss filter|delay] [--copies 2]
    python bench/lossy.py proxy --tcp HOST:PORT ... --udp HOST:PORT ...   (the proxy alone)

``run`` starts real peers or stand-ins (the ThingsBoard stand-in for the tcp,
http and thingsboard kinds, the Node Socket.IO 4 server, coturn for stun and
turn, the frps stand-in), one proxy port per service in front of them, and
``jupiterd run`` with default thresholds (interval 2 s, fast 0.25 s, timeout
1 s, fall 3, rise 2) and a loopback-only, monitor-only configuration. At the
end: per kind, probes, failures by reason, SUSPECT and DOWN transitions
(the goal is zero DOWN), from the daemon's JSON log and /metrics.

The proxy (its own process, on the cores the daemon is not pinned to):

- UDP: each datagram, either way, is dropped with probability ``loss``; the
  rest are delayed by ``delay`` plus a uniform jitter of up to ``jitter``.
- TCP, ``--tcp-loss filter`` (default): loss happens in the kernel, so TCP
  itself sees it and recovers as it would on a real path (SYN retransmitted
  after the 1 s initial RTO, data after the 200 ms minimum RTO or a tail loss
  probe). Classic BPF socket filters drop packets at random
  (``SKF_AD_RANDOM``): on the proxy's listening socket (inherited by the
  accepted ones) ``loss`` of the client's segments, and on its upstream
  sockets ``loss`` of the server's. Each direction of the end-to-end path
  thus loses ``loss`` of its data. The handshake is two handshakes here, so
  its loss is moved to the client's: its SYN is dropped with the chance that
  a SYN or a SYN-ACK is lost, 1-(1-loss)^2, and the proxy's own handshake
  with the server loses nothing (else a lost SYN-ACK there would look, to
  the client, like a stalled established connection).
- TCP, ``--tcp-loss delay``: an emulation without the kernel's help. A
  ``loss`` share of new connections reach the server 1 s late (a lost SYN or
  SYN-ACK) and a ``loss`` share of forwarded chunks are held back 200 to
  500 ms (a lost segment's retransmission).
- Jitter on every TCP chunk too (order kept within a direction).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SKF_AD_RANDOM = 0xFFFFF000 + 56  # SKF_AD_OFF + SKF_AD_RANDOM, as an unsigned 32-bit offset
SYN_RTO = 1.0  # Linux's initial RTO (TCP_TIMEOUT_INIT)
DATA_RTO = (0.2, 0.5)  # TCP_RTO_MIN and a little beyond
UDP_IDLE_SECONDS = 30.0

stats: Counter[str] = Counter()


# --------------------------------------------------------------------------- loss in the kernel


def attach_drop_filter(sock: socket.socket, share: float, syn_share: float | None = None) -> None:
    """Drop ``share`` of the packets this socket receives at random, and
    ``syn_share`` (default: ``share``) of those carrying SYN. The filter sees
    a TCP segment from its header on: byte 13 holds the flags."""
    syn = share if syn_share is None else syn_share

    def th(p: float) -> int:
        return min(0xFFFFFFFF, int(p * 2**32))

    insns = [
        (0x30, 0, 0, 13),  # 0: ldb [13]          (TCP flags; UDP: its checksum, harmless)
        (0x45, 0, 2, 0x02),  # 1: jset #SYN       -> 2, else -> 4
        (0x20, 0, 0, SKF_AD_RANDOM),  # 2: ld rand
        (0x35, 2, 3, th(syn)),  # 3: jge #syn     -> accept, else drop
        (0x20, 0, 0, SKF_AD_RANDOM),  # 4: ld rand
        (0x35, 0, 1, th(share)),  # 5: jge #share -> accept, else drop
        (0x06, 0, 0, 0xFFFFFFFF),  # 6: accept the whole packet
        (0x06, 0, 0, 0),  # 7: drop
    ]
    prog = b"".join(struct.pack("HBBI", *i) for i in insns)
    buf = ctypes.create_string_buffer(prog)
    fprog = struct.pack("@HP", len(insns), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


# --------------------------------------------------------------------------- proxy


class Link:
    """Loss and delay settings shared by every relay."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.loss: float = args.loss
        self.delay: float = args.delay
        self.jitter: float = args.jitter
        self.mode: str = args.tcp_loss
        self.rng = random.Random(args.seed)

    def lag(self) -> float:
        return self.delay + self.rng.uniform(0, self.jitter)

    def lost(self) -> bool:
        return self.rng.random() < self.loss


async def pump(
    link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str
) -> None:
    """Forward one direction, each chunk delayed, order kept."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                with contextlib.suppress(OSError, RuntimeError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            writer.write(data)
            stats[f"{name} bytes"] += len(data)

    task = asyncio.create_task(deliver())
    last = 0.0
    try:
        while True:
            data = await reader.read(65536)
            due = max(last, loop.time() + link.lag())
            if data and link.mode == "delay" and link.lost():
                due += link.rng.uniform(*DATA_RTO)
                stats["tcp chunks held back"] += 1
            last = due
            queue.put_nowait((due, data or None))
            if not data:
                break
        await task
    except (OSError, asyncio.IncompleteReadError):
        task.cancel()
        raise


async def tcp_session(
    link: Link,
    upstream: tuple[str, int],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    loop = asyncio.get_running_loop()
    stats["tcp connections"] += 1
    up_w: asyncio.StreamWriter | None = None
    try:
        if link.mode == "delay" and link.lost():
            stats["tcp connections delayed (lost SYN)"] += 1
            await asyncio.sleep(SYN_RTO)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if link.mode == "filter" and link.loss > 0:
                # Data from the server is lost here; the handshake's losses
                # are all taken on the client's side (see the listener).
                attach_drop_filter(sock, link.loss, syn_share=0.0)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            async with asyncio.timeout(30):
                await loop.sock_connect(sock, upstream)
        except BaseException:
            sock.close()
            raise
        up_r, up_w = await asyncio.open_connection(sock=sock)
        results = await asyncio.gather(
            pump(link, reader, up_w, "up"),
            pump(link, up_r, writer, "down"),
            return_exceptions=True,
        )
        if any(isinstance(r, BaseException) for r in results):
            stats["tcp sessions reset"] += 1
    except (OSError, TimeoutError):
        stats["tcp upstream connect failed"] += 1
    finally:
        writer.transport.abort()
        if up_w is not None:
            up_w.transport.abort()


class UdpRelay(asyncio.DatagramProtocol):
    """One listening UDP port; one upstream socket per client address."""

    def __init__(self, link: Link, upstream: tuple[str, int]) -> None:
        self.link = link
        self.upstream = upstream
        self.transport: asyncio.DatagramTransport | None = None
        self.clients: dict[Any, asyncio.DatagramTransport] = {}
        self.used: dict[Any, float] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.link.lost():
            stats["udp dropped up"] += 1
            return
        loop = asyncio.get_running_loop()
        loop.call_later(self.link.lag(), lambda: loop.create_task(self._up(data, addr)))

    async def _up(self, data: bytes, addr: Any) -> None:
        loop = asyncio.get_running_loop()
        t = self.clients.get(addr)
        if t is None or t.is_closing():
            t, _ = await loop.create_datagram_endpoint(
                lambda: _UdpBack(self, addr), remote_addr=self.upstream
            )
            self.clients[addr] = t
            if len(self.clients) % 64 == 0:
                self._sweep(loop.time())
        self.used[addr] = loop.time()
        t.sendto(data)
        stats["udp forwarded up"] += 1

    def _sweep(self, now: float) -> None:
        """Close the upstream sockets of clients quiet for a while (each
        probe comes from a fresh port)."""
        for addr, last in list(self.used.items()):
            if now - last > UDP_IDLE_SECONDS:
                self.clients.pop(addr).close()
                del self.used[addr]

    def back(self, data: bytes, addr: Any) -> None:
        if self.link.lost():
            stats["udp dropped down"] += 1
            return
        assert self.transport is not None
        transport = self.transport
        asyncio.get_running_loop().call_later(self.link.lag(), transport.sendto, data, addr)
        stats["udp forwarded down"] += 1


class _UdpBack(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay, client: Any) -> None:
        self.relay, self.client = relay, client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.relay.back(data, self.client)


async def serve_proxy(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    link = Link(args)
    addrs: list[str] = []
    for i, (proto, up) in enumerate(args.upstreams):
        host = f"{args.net}.{i + 1}"
        uhost, uport = up.rsplit(":", 1)
        upstream = (uhost, int(uport))
        if proto == "tcp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if link.mode == "filter" and link.loss > 0:
                # Accepted sockets inherit it. A SYN stands for the whole
                # handshake: it fails if the SYN or the SYN-ACK is lost.
                attach_drop_filter(sock, link.loss, syn_share=1 - (1 - link.loss) ** 2)
            sock.bind((host, 0))
            sock.listen(1024)
            sock.setblocking(False)

            async def handle(
                r: asyncio.StreamReader, w: asyncio.StreamWriter, _up: tuple[str, int] = upstream
            ) -> None:
                await tcp_session(link, _up, r, w)

            await asyncio.start_server(handle, sock=sock)
        else:
            transport, _ = await loop.create_datagram_endpoint(
                lambda _up=upstream: UdpRelay(link, _up),
                local_addr=(host, 0),  # type: ignore[misc]
            )
            sock = transport.get_extra_info("socket")
        addrs.append(f"{host}:{sock.getsockname()[1]}")
    loop.add_signal_handler(
        signal.SIGUSR1, lambda: print("stats " + json.dumps(dict(stats)), flush=True)
    )
    print("ready " + " ".join(addrs), flush=True)
    await asyncio.Event().wait()


# --------------------------------------------------------------------------- the run


SECRET = "bench-secret"
TOKEN = "bench-token"
TB_USER, TB_PASSWORD = "probe@example.com", "pw"


def run(args: argparse.Namespace) -> None:
    from bench.peers import (
        MEASURED_CPU,
        Daemon,
        helper_cpus,
        node_sio,
        peer_process,
        report_line,
        spawn,
    )
    from jupiterd.sandbox.peers.coturn import free_port_pair
    from tests.peers.commands import python_peer

    pinned = args.pin and len(os.sched_getaffinity(0)) > 1
    cpus = helper_cpus() if pinned else None
    if cpus:
        os.sched_setaffinity(0, cpus)
    with contextlib.ExitStack() as stack:
        tb = stack.enter_context(
            spawn(
                python_peer(
                    "thingsboard_standin.py",
                    *("--host", "127.0.0.1", "--port", "0"),
                    *("--user", TB_USER, "--password", TB_PASSWORD),
                ),
                cpus=cpus,
            )
        )
        sio = stack.enter_context(
            spawn(node_sio("--major", "4", "--host", "127.0.0.1", "--port", "0"), cpus=cpus)
        )
        port = free_port_pair("127.0.0.1")
        turn = stack.enter_context(
            spawn(
                python_peer(
                    "coturn.py", "--host", "127.0.0.1", "--port", str(port), "--secret", SECRET
                ),
                cpus=cpus,
            )
        )
        frps = stack.enter_context(
            spawn(
                python_peer(
                    "frps_standin.py", "--host", "127.0.0.1", "--port", "0", "--token", TOKEN
                ),
                cpus=cpus,
            )
        )
        # kind, upstream, proxy protocol, options
        kinds: list[tuple[str, str, str, dict[str, Any]]] = [
            ("tcp", tb, "tcp", {}),
            ("http", tb, "tcp", {"path": "/login", "body_contains": "ThingsBoard"}),
            ("thingsboard", tb, "tcp", {"username": TB_USER, "password": TB_PASSWORD}),
            ("socketio", sio, "tcp", {}),
            ("stun", turn, "udp", {}),
            ("turn", turn, "udp", {"secret": SECRET}),
            ("frp", frps, "tcp", {"token": TOKEN}),
        ]
        kinds = [k for k in kinds if k[0] in args.kinds.split(",")]
        plan = [k for k in kinds for _ in range(args.copies)]
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "proxy",
            *("--loss", str(args.loss), "--delay", str(args.delay)),
            *("--jitter", str(args.jitter), "--tcp-loss", args.tcp_loss),
        ]
        for _, up, proto, _ in plan:
            cmd += [f"--{proto}", up]
        proxy = stack.enter_context(peer_process(cmd, cpus=cpus))
        services: dict[str, Any] = {}
        for i, ((kind, _, _, opts), addr) in enumerate(zip(plan, proxy.addresses, strict=True)):
            host, p = addr.rsplit(":", 1)
            probe: dict[str, Any] = {"kind": kind, "port": int(p)}
            if opts:
                probe["options"] = opts
            services[f"{kind}-{i}"] = {
                "probe": probe,
                "primary": {"address": host},
                "backup": {"address": host},
            }
        print(
            f"lossy: {len(services)} services ({', '.join(k[0] for k in kinds)} x{args.copies}), "
            f"default thresholds, {args.minutes:g} min; loss {100 * args.loss:g}% each way "
            f"(TCP: {args.tcp_loss}), delay {1e3 * args.delay:g} ms + jitter up to "
            f"{1e3 * args.jitter:g} ms each way",
            flush=True,
        )
        with Daemon(services, cpus={MEASURED_CPU} if pinned else None) as d:
            d.wait_ready()
            run_window(d, args.minutes)
            m = d.metrics()
            events = _events(d)
            line = report_line(proxy)
            pstats = json.loads(line.split(" ", 1)[1]) if line.startswith("stats ") else {}
    by_kind, trans = tallies(m, events)
    print(
        f"{'kind':12} {'probes':>7} {'failed':>7}  {'SUSPECT':>7} {'DOWN':>5}  failures by reason"
    )
    for kind, _, _, _ in kinds:
        c = by_kind[kind]
        n = sum(c.values())
        failed = n - c["ok"]
        reasons = ", ".join(f"{r} {v}" for r, v in c.most_common() if r != "ok") or "-"
        print(
            f"{kind:12} {n:7d} {failed:7d}  {trans[kind]['suspect']:7d} {trans[kind]['down']:5d}  "
            f"{reasons}"
        )
    downs = [e for e in events if e.get("new") == "down"]
    print(f"DOWN decisions: {len(downs)} (goal 0)")
    for e in downs[:20]:
        print(f"  {e['service']}: {e.get('reason', '')}")
    details = Counter(
        (e["service"].rsplit("-", 1)[0], e.get("reason", ""))
        for e in events
        if e.get("new") == "suspect"
    )
    for (kind, why), n in details.most_common(args.show):
        print(f"  suspect x{n} {kind}: {why[:200]}")
    print(f"proxy: {json.dumps(pstats)}")


def tallies(
    m: dict[str, float], events: list[dict[str, Any]]
) -> tuple[dict[str, Counter[str]], dict[str, Counter[str]]]:
    """Probe results by kind and reason, and state transitions by kind."""
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for key, value in m.items():
        if key.startswith("jupiterd_probe_results_total{"):
            labels = dict(x.split("=", 1) for x in key[key.index("{") + 1 : -1].split(","))
            by_kind[labels["kind"]][labels["reason"]] += int(value)
    trans: dict[str, Counter[str]] = defaultdict(Counter)
    for e in events:
        if e.get("event") == "target state":
            trans[e["service"].rsplit("-", 1)[0]][e["new"]] += 1
    return by_kind, trans


def run_window(d: Any, minutes: float) -> None:
    """Let the daemon run ``minutes``, saying every minute how many DOWN
    decisions it has taken; stop if it dies."""
    t0 = time.monotonic()
    end = t0 + 60 * minutes
    while time.monotonic() < end:
        time.sleep(min(60.0, max(0.0, end - time.monotonic())))
        if d.proc is not None and d.proc.poll() is not None:
            raise SystemExit(f"jupiterd died:\n{d.log_tail()}")
        downs = sum(1 for e in _events(d) if e.get("new") == "down")
        print(f"  t={time.monotonic() - t0:5.0f} s: DOWN so far {downs}", flush=True)


def _events(d: Any) -> list[dict[str, Any]]:
    out = []
    try:
        text = d.log_path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "proxy"):
        s = sub.add_parser(name)
        s.add_argument("--loss", type=float, default=0.1, help="share of packets lost each way")
        s.add_argument("--delay", type=float, default=0.005, help="one-way delay (s)")
        s.add_argument("--jitter", type=float, default=0.03, help="uniform extra delay up to (s)")
        s.add_argument("--tcp-loss", choices=["filter", "delay"], default="filter")
        s.add_argument("--seed", type=int, default=None)
    r = sub.choices["run"]
    r.add_argument("--minutes", type=float, default=1)
    r.add_argument("--copies", type=int, default=2, help="services per kind")
    r.add_argument("--kinds", default="tcp,http,thingsboard,socketio,stun,turn,frp")
    r.add_argument("--show", type=int, default=12, help="most common SUSPECT reasons shown")
    r.add_argument("--no-pin", dest="pin", action="store_false")
    x = sub.choices["proxy"]
    x.add_argument("--net", default="127.0.6")
    x.add_argument("--tcp", action="append", default=[], metavar="HOST:PORT")
    x.add_argument("--udp", action="append", default=[], metavar="HOST:PORT")
    args = p.parse_args()
    if args.cmd == "proxy":
        # Keep the command line's order: --tcp and --udp interleave.
        ups: list[tuple[str, str]] = []
        argv = sys.argv[2:]
        for i, a in enumerate(argv):
            if a in ("--tcp", "--udp") and i + 1 < len(argv):
                ups.append((a[2:], argv[i + 1]))
        args.upstreams = ups
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_proxy(args))
    else:
        run(args)


if __name__ == "__main__":
    main()
