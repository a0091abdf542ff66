"""Network namespaces for tests and benchmarks: real packet loss made by the kernel.

``LossyNamespace`` creates a namespace joined by a veth pair to the
namespace of whoever creates it (the prober's), and drops a share of the
packets the namespace receives and sends (``iptables -m statistic --mode
random`` on its INPUT and OUTPUT chains: ``loss`` each way, 1-(1-loss)^2 per
round trip). Peers run inside it (``wrap`` a command); the prober reaches
them at ``peer_ip``. Addresses come from 198.19.0.0/16, the upper half of
RFC 2544's benchmarking range, which no real network uses; the creator's
side gets ``.1`` of a /30, the namespace ``.2``. ``close()`` deletes the
namespace and its veth pair; stop the peers first.

``sh`` and ``mac`` are shared with the icmp tests' namespaces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

from jupiterd.sandbox.peers.process import Peer, peer

from .commands import node_peer, python_peer


class Unavailable(Exception):
    """Namespaces or iptables cannot be used here; the message says why."""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


def mac(ns: str | None, dev: str) -> str:
    """The hardware address of ``dev`` in namespace ``ns`` (None: this one)."""
    where = ["-n", ns] if ns else []
    out = subprocess.run(
        ["ip", *where, "-j", "link", "show", dev],
        check=True,
        capture_output=True,
        text=True,
        timeout=20,
    )
    return str(json.loads(out.stdout)[0]["address"])


def iptables() -> str:
    """The iptables binary to use (either backend works inside a namespace)."""
    for name in ("iptables", "iptables-nft", "iptables-legacy"):
        if shutil.which(name):
            return name
    raise Unavailable("iptables is not installed (Debian package iptables)")


class LossyNamespace:
    def __init__(self, loss: float, prefix: str = "jt-loss") -> None:
        if os.geteuid() != 0:
            raise Unavailable("network namespaces and iptables need root")
        if shutil.which("ip") is None:
            raise Unavailable("ip (iproute2) is not installed")
        self.loss = loss
        tag = secrets.token_hex(3)
        self.name = f"{prefix}-{tag}"
        self.host_dev = f"jl{tag}"  # the creator's end (interface names: 15 bytes at most)
        self.created = False
        self.linked = False
        base = ipaddress.ip_address("198.19.0.0") + 4 * random.randrange(16384)
        self.local_ip = str(base + 1)
        self.peer_ip = str(base + 2)

    def open(self) -> LossyNamespace:
        exe = iptables()
        try:
            sh("ip", "netns", "add", self.name)
        except subprocess.CalledProcessError as exc:
            why = exc.stderr.decode().strip()
            raise Unavailable(f"ip netns is not possible here: {why}") from None
        self.created = True
        ns = self.name
        sh("ip", "link", "add", self.host_dev, "type", "veth", "peer", "name", "vq", "netns", ns)
        self.linked = True
        for step in (
            ("ip", "addr", "add", f"{self.local_ip}/30", "dev", self.host_dev),
            ("ip", "-n", ns, "addr", "add", f"{self.peer_ip}/30", "dev", "vq"),
            ("ip", "-n", ns, "link", "set", "lo", "up"),
            ("ip", "link", "set", self.host_dev, "up"),
            ("ip", "-n", ns, "link", "set", "vq", "up"),
        ):
            sh(*step)
        # Static neighbours: an ARP exchange lost to the filter below would
        # stall the first packets for a second and look like more loss.
        sh("ip", "neigh", "replace", self.peer_ip, "lladdr", mac(ns, "vq"), "dev", self.host_dev)
        local_mac = mac(None, self.host_dev)
        sh("ip", "-n", ns, "neigh", "replace", self.local_ip, "lladdr", local_mac, "dev", "vq")
        if self.loss > 0:
            for chain in ("INPUT", "OUTPUT"):
                rule = ["-A", chain, "-m", "statistic", "--mode", "random"]
                rule += ["--probability", str(self.loss), "-j", "DROP"]
                try:
                    sh("ip", "netns", "exec", ns, exe, *rule)
                except subprocess.CalledProcessError as exc:
                    self.close()
                    raise Unavailable(
                        f"{exe} -m statistic failed in a namespace: {exc.stderr.decode().strip()}"
                    ) from None
        return self

    def wrap(self, cmd: list[str]) -> list[str]:
        """``cmd`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def dropped(self) -> dict[str, int]:
        """Packets the loss rules dropped so far, per chain."""
        out = subprocess.run(
            self.wrap([iptables(), "-nvxL"]), capture_output=True, text=True, timeout=20
        ).stdout
        counts: dict[str, int] = {}
        chain = ""
        for line in out.splitlines():
            if line.startswith("Chain "):
                chain = line.split()[1]
            elif "statistic" in line:
                counts[chain] = int(line.split()[0])
        return counts

    def close(self) -> None:
        if self.linked:
            subprocess.run(["ip", "link", "del", self.host_dev], capture_output=True, timeout=20)
            self.linked = False
        if self.created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=20)
            self.created = False

    def __enter__(self) -> LossyNamespace:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- one peer per probe kind inside the namespace ------------------------------

SECRET = "loss-turn-secret"
TOKEN = "loss-frp-token"
TB_USER, TB_PASSWORD = "probe@example.com", "loss-password"
KINDS = ("icmp", "tcp", "http", "thingsboard", "socketio", "stun", "turn", "frp")


@contextlib.contextmanager
def kind_peers(ns: LossyNamespace) -> Iterator[dict[str, tuple[str, dict[str, Any], Peer | None]]]:
    """Real peers or stand-ins in ``ns``: kind -> (target, options, peer).
    The ThingsBoard stand-in serves tcp, http and thingsboard; coturn (REST
    secret) stun and turn; the Node Socket.IO 4 server socketio; the frps
    stand-in frp; the namespace itself answers icmp (peer None)."""
    host = ns.peer_ip
    with contextlib.ExitStack() as stack:

        def start(cmd: list[str]) -> Peer:
            return stack.enter_context(peer(ns.wrap(cmd)))

        tb = start(
            python_peer(
                "thingsboard_standin.py",
                *("--host", host, "--port", "0", "--user", TB_USER, "--password", TB_PASSWORD),
            )
        )
        sio = start(node_peer("sio_server.js", "--major", "4", "--host", host, "--port", "0"))
        turn = start(python_peer("coturn.py", "--host", host, "--secret", SECRET))
        frps = start(
            python_peer("frps_standin.py", "--host", host, "--port", "0", "--token", TOKEN)
        )
        yield {
            "icmp": (host, {}, None),
            "tcp": (tb.address, {}, tb),
            "http": (f"http://{tb.address}/login", {"body_contains": "ThingsBoard"}, tb),
            "thingsboard": (
                f"http://{tb.address}",
                {"username": TB_USER, "password": TB_PASSWORD},
                tb,
            ),
            "socketio": (f"http://{sio.address}", {}, sio),
            "stun": (turn.address, {}, turn),
            "turn": (turn.address, {"secret": SECRET}, turn),
            "frp": (frps.address, {"token": TOKEN}, frps),
        }
