"""The ``icmp`` probe: loopback echoes, silent and unreachable hosts in
network namespaces, both socket kinds, the permission-denied path, and a
fuzzer over the reply parser."""

import asyncio
import contextlib
import errno
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import probes
from probes import icmp
from probes.options import OptionError
from tests.conftest import need
from tests.peers.netns import mac, sh

R = probes.Reason
ROOT = Path(__file__).resolve().parent.parent


# -- loopback, in this namespace (raw socket as root, ping socket otherwise) --


@pytest.mark.parametrize("target", ["127.0.0.1", "::1", "[::1]"])
async def test_loopback_answers(target):
    result = await probes.run("icmp", target, {}, 2.0)
    assert result.ok, result
    assert result.facts["replies"] == result.facts["sent"] == 1
    assert result.facts["socket"] in ("dgram", "raw")
    assert 0 < result.facts["rtt_seconds"] < 2.0
    assert isinstance(result.facts["ttl"], int)
    assert "echo" in result.phases


async def test_count_and_hostname():
    # The first reply ends the probe: the next echo, 0.5 s later, is never sent.
    result = await probes.run("icmp", "localhost", {"count": 3, "interval": 0.5}, 2.0)
    assert result.ok, result
    assert (result.facts["sent"], result.facts["replies"]) == (1, 1)
    assert "answered the echo request" in result.detail
    assert result.facts["address"] in ("127.0.0.1", "::1")


async def test_concurrent_probes_ignore_each_others_replies():
    # Raw sockets see every echo reply on the host: each probe must count its own.
    opts = {"count": 5, "interval": 0.5, "payload_size": 32}
    results = await asyncio.gather(
        *(probes.run("icmp", t, opts, 2.0) for t in ["127.0.0.1"] * 4 + ["::1"] * 4)
    )
    for result in results:
        assert result.ok, result
        assert result.facts["replies"] == result.facts["sent"] == 1


def test_options():
    assert icmp.Options.parse({}).model_dump() == {
        "count": 4,
        "interval": None,
        "payload_size": 16,
    }
    assert icmp.Options.parse({"count": "3", "interval": "0.5"}).count == 3
    for bad in ({"count": 0}, {"interval": -1}, {"payload_size": 100_000}, {"ttl": 3}):
        with pytest.raises(OptionError):
            icmp.Options.parse(bad)
    with pytest.raises(OptionError, match="no port"):
        probes.get_kind("icmp").check_target("10.0.0.1:80")


# -- the permission-denied path, by injection --


def refusing_factory(dgram_errno, raw_errno):
    def factory(family, kind, proto):
        code = dgram_errno if kind == socket.SOCK_DGRAM else raw_errno
        raise OSError(code, os.strerror(code))

    return factory


async def test_permission_denied_tells_what_to_change(monkeypatch):
    monkeypatch.setattr(icmp, "SOCKET_FACTORY", refusing_factory(errno.EACCES, errno.EPERM))
    result = await probes.run("icmp", "127.0.0.1", {}, 2.0)
    assert result.reason == R.PERMISSION_DENIED
    gid = os.getegid()
    assert f"net.ipv4.ping_group_range does not include gid {gid}" in result.detail
    assert f"sysctl -w net.ipv4.ping_group_range='{gid} {gid}'" in result.detail
    assert "CAP_NET_RAW" in result.detail
    assert "AmbientCapabilities=CAP_NET_RAW" in result.detail


async def test_no_ipv6_on_the_host(monkeypatch):
    factory = refusing_factory(errno.EAFNOSUPPORT, errno.EAFNOSUPPORT)
    monkeypatch.setattr(icmp, "SOCKET_FACTORY", factory)
    result = await probes.run("icmp", "::1", {}, 2.0)
    assert result.reason == R.UNREACHABLE
    assert result.detail == "IPv6 is not available on this host"


# -- the reply parser --


def ipv4(payload: bytes, src="10.0.0.1", dst="10.0.0.2", proto=1, ttl=61, ihl=5) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        ihl * 4 + len(payload),
        0,
        0,
        ttl,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header + b"\0" * (ihl * 4 - 20) + payload


def ipv6_header(dst="fd00::2", nh=58) -> bytes:
    return struct.pack(
        "!IHBB16s16s",
        6 << 28,
        0,
        nh,
        64,
        socket.inet_pton(socket.AF_INET6, "fd00::1"),
        socket.inet_pton(socket.AF_INET6, dst),
    )


def icmp_msg(kind, code, rest: bytes) -> bytes:
    return struct.pack("!BBH", kind, code, 0) + rest


def test_parse_v4_echo_reply_with_ip_header():
    reply = icmp_msg(0, 0, struct.pack("!HH", 0x1234, 7) + b"payload")
    pkt = icmp.parse_packet(ipv4(reply, ttl=57, ihl=6), v6=False, ip_header=True)
    assert (pkt.ident, pkt.seq, pkt.payload, pkt.ttl, pkt.error) == (
        0x1234,
        7,
        b"payload",
        57,
        False,
    )


def test_parse_v4_unreachable_quoting_our_echo():
    echo = icmp.echo_request(False, 0x1234, 9, b"x" * 16)
    quoted = ipv4(echo, src="10.0.0.1", dst="198.18.1.1")[: 20 + 8]  # header + 8 bytes
    err = icmp_msg(3, 1, b"\0\0\0\0" + quoted)
    pkt = icmp.parse_packet(ipv4(err), v6=False, ip_header=True)
    assert (pkt.error, pkt.code, pkt.ident, pkt.seq, pkt.quoted_dst) == (
        True,
        1,
        0x1234,
        9,
        "198.18.1.1",
    )
    udp = icmp_msg(3, 3, b"\0\0\0\0" + ipv4(b"\0" * 8, proto=17))
    assert icmp.parse_packet(ipv4(udp), v6=False, ip_header=True) is None  # not about an echo


def test_parse_v6_reply_error_and_others():
    reply = icmp_msg(129, 0, struct.pack("!HH", 5, 6) + b"abc")
    assert icmp.parse_packet(reply, v6=True, ip_header=False).payload == b"abc"
    echo = icmp.echo_request(True, 5, 6, b"abc")
    err = icmp_msg(1, 0, b"\0\0\0\0" + ipv6_header("fd98::1") + echo)
    pkt = icmp.parse_packet(err, v6=True, ip_header=False)
    assert (pkt.error, pkt.seq, pkt.quoted_dst) == (True, 6, "fd98::1")
    neighbour_solicitation = icmp_msg(135, 0, b"\0" * 20)
    assert icmp.parse_packet(neighbour_solicitation, v6=True, ip_header=False) is None
    behind_ext = icmp_msg(1, 0, b"\0\0\0\0" + ipv6_header(nh=0) + echo)
    assert icmp.parse_packet(behind_ext, v6=True, ip_header=False) is None


@pytest.mark.parametrize(
    "data,v6,ip_header,needle",
    [
        (b"\x45" + b"\0" * 10, False, True, "shorter than its header"),
        (b"\x65" + b"\0" * 30, False, True, "IP version 6"),
        (b"\x4f" + b"\0" * 30, False, True, "header length 60"),
        (b"\x00\x00", True, False, "shorter than its header"),
        (icmp_msg(1, 0, b"\0\0\0\0" + b"\x60" + b"\0" * 20), True, False, "quoting only"),
        (icmp_msg(3, 0, b"\0\0\0\0" + ipv4(b"\x08\0")), False, False, "quoting 2 bytes"),
    ],
)
def test_parse_malformed(data, v6, ip_header, needle):
    with pytest.raises(icmp.MalformedPacket, match=needle):
        icmp.parse_packet(data, v6, ip_header)


def test_checksum():
    # RFC 1071's example words 0001 f203 f4f5 f6f7 sum to ddf2 (complement 220d).
    assert icmp.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    packet = icmp.echo_request(False, 1, 2, b"odd")
    assert icmp.checksum(packet) == 0


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=120), v6=st.booleans(), ip_header=st.booleans())
def test_fuzz_parser_random_bytes(data, v6, ip_header):
    with contextlib.suppress(icmp.MalformedPacket):
        icmp.parse_packet(data, v6, ip_header and not v6)


_v4_kinds = st.sampled_from([0, 3, 8, 11, 5, 13])
_v6_kinds = st.sampled_from([129, 1, 3, 128, 135, 2])


@settings(max_examples=1000, deadline=None)
@given(
    v6=st.booleans(),
    kind4=_v4_kinds,
    kind6=_v6_kinds,
    code=st.integers(0, 255),
    inner_kind=st.sampled_from([8, 128, 0, 17]),
    cut=st.integers(0, 120),
    ihl=st.integers(0, 15),
    junk=st.binary(max_size=8),
)
def test_fuzz_parser_structured(v6, kind4, kind6, code, inner_kind, cut, ihl, junk):
    """Near-valid packets: real headers with truncations, odd header lengths
    and quoted packets of other kinds."""
    quoted_icmp = struct.pack("!BBHHH", inner_kind, 0, 0, 1, 2) + junk
    if v6:
        msg = icmp_msg(kind6, code, b"\0\0\0\0" + ipv6_header() + quoted_icmp)
        data = msg[:cut]
    else:
        inner = ipv4(quoted_icmp, ihl=max(ihl, 5))
        inner = bytes([0x40 | ihl]) + inner[1:]
        msg = icmp_msg(kind4, code, b"\0\0\0\0" + inner)
        data = ipv4(msg)[:cut] if cut > 20 else ipv4(msg)
    try:
        pkt = icmp.parse_packet(data, v6, ip_header=not v6)
    except icmp.MalformedPacket:
        return
    if pkt is not None and pkt.error:
        assert (pkt.ident, pkt.seq) == (1, 2)


async def test_exchange_matches_only_its_own_replies():
    a, b = socket.socketpair()
    try:
        ex = icmp._Exchange(a, False, True, "10.0.0.2", 4, 8)
        seq, _ = ex.packet(0)
        ex.sent_at[seq] = 0.0

        def reply(ident=ex.ident, s=seq, payload=ex.payload):
            return ipv4(icmp_msg(0, 0, struct.pack("!HH", ident, s) + payload))

        ex._on_data(reply(ident=ex.ident ^ 1), [], ("10.0.0.2", 0))  # another pinger
        ex._on_data(reply(s=seq ^ 0x100), [], ("10.0.0.2", 0))  # a sequence we never sent
        ex._on_data(reply(payload=b"x" * 8), [], ("10.0.0.2", 0))  # corrupted payload
        ex._on_data(b"\x45\x00", [], ("10.0.0.2", 0))  # malformed
        other = icmp.echo_request(False, ex.ident, seq, b"")
        ex._on_data(ipv4(icmp_msg(3, 1, b"\0" * 4 + ipv4(other, dst="10.9.9.9"))), [], ("r", 0))
        assert ex.ignored == 5 and not ex.rtts and ex.error is None
        ex._on_data(reply(), [], ("10.0.0.2", 0))
        ex._on_data(reply(), [], ("10.0.0.2", 0))  # a duplicate
        assert list(ex.rtts) == [seq] and ex.ignored == 6 and ex.ttl == 61
        assert ex.done.done()  # one reply proves the host reachable
    finally:
        a.close()
        b.close()


# -- network namespaces: a silent host, unreachable networks, ping sockets,
#    and a real non-root process --

RUNNER = r"""
import asyncio, json, os, sys
import probes

async def main(jobs):
    results = await asyncio.gather(
        *(probes.run("icmp", t, o, timeout) for t, o, timeout in jobs))
    return [r.to_dict() for r in results]

jobs = json.loads(sys.argv[1])
if len(sys.argv) > 2:  # drop to an unprivileged user after the imports
    os.setgroups([])
    os.setgid(int(sys.argv[2]))
    os.setuid(int(sys.argv[2]))
print(json.dumps(asyncio.run(main(jobs))))
"""

# Inside the namespaces only: nothing here touches the host's own network.
SILENT4, UNREACH4 = "198.18.0.2", "198.18.1.1"
SILENT6, UNREACH6 = "fd00:6a75::2", "fd00:6a76::1"


class Namespaces:
    """P runs the probes; Q is the peer across a veth pair: it ignores echo
    requests and forwards everything else into a network with no route."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.p, self.q = f"jt-icmp-p-{tag}", f"jt-icmp-q-{tag}"
        self.created: list[str] = []

    def sh(self, *args: str) -> None:
        sh(*args)

    def setup(self) -> None:
        for ns in (self.p, self.q):
            try:
                self.sh("ip", "netns", "add", ns)
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"ip netns is not possible here: {exc.stderr.decode().strip()}")
            self.created.append(ns)
            # Without DAD, IPv6 addresses (link-local too) work at once,
            # instead of about a second after the link comes up.
            for key in ("default", "all"):
                self.sh(
                    "ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0"
                )
        p, q = self.p, self.q
        self.sh(
            "ip", "-n", p, "link", "add", "vp", "type", "veth", "peer", "name", "vq", "netns", q
        )
        steps = [
            ("ip", "-n", p, "addr", "add", "198.18.0.1/30", "dev", "vp"),
            ("ip", "-n", q, "addr", "add", "198.18.0.2/30", "dev", "vq"),
            ("ip", "-n", p, "-6", "addr", "add", "fd00:6a75::1/64", "dev", "vp", "nodad"),
            ("ip", "-n", q, "-6", "addr", "add", "fd00:6a75::2/64", "dev", "vq", "nodad"),
            ("ip", "-n", p, "link", "set", "lo", "up"),
            ("ip", "-n", q, "link", "set", "lo", "up"),
            ("ip", "-n", p, "link", "set", "vp", "up"),
            ("ip", "-n", q, "link", "set", "vq", "up"),
            ("ip", "-n", p, "route", "add", "198.18.1.0/24", "via", "198.18.0.2"),
            ("ip", "-n", p, "-6", "route", "add", "fd00:6a76::/64", "via", "fd00:6a75::2"),
        ]
        for step in steps:
            self.sh(*step)
        # Static neighbours: the first packet must not wait for ARP or for
        # an IPv6 neighbour solicitation (about a second on a fresh veth).
        mac = {ns: self.mac(ns, dev) for ns, dev in ((p, "vp"), (q, "vq"))}
        for ns, dev, peer4, peer6, peer in (
            (p, "vp", "198.18.0.2", "fd00:6a75::2", q),
            (q, "vq", "198.18.0.1", "fd00:6a75::1", p),
        ):
            for addr in (peer4, peer6):
                self.sh("ip", "-n", ns, "neigh", "replace", addr, "lladdr", mac[peer], "dev", dev)
        for key in (
            "net.ipv4.icmp_echo_ignore_all=1",
            "net.ipv6.icmp.echo_ignore_all=1",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ):
            self.sh("ip", "netns", "exec", q, "sysctl", "-qw", key)

    def mac(self, ns: str, dev: str) -> str:
        return mac(ns, dev)

    def set_ping_group_range(self, value: str) -> None:
        self.sh(
            "ip", "netns", "exec", self.p, "sysctl", "-qw", f"net.ipv4.ping_group_range={value}"
        )

    def run(self, jobs, uid: int | None = None):
        argv = ["ip", "netns", "exec", self.p, sys.executable, "-c", RUNNER, json.dumps(jobs)]
        if uid is not None:
            argv.append(str(uid))
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        return out.stdout and json.loads(out.stdout)

    def cleanup(self) -> None:
        for ns in self.created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


@pytest.fixture(scope="module")
def netns():
    need("ip")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    ns = Namespaces()
    try:
        ns.setup()  # skips only if namespaces cannot be created at all
        yield ns
    finally:
        ns.cleanup()


SCENARIOS = [
    ("127.0.0.1", {}, 2.0),
    ("::1", {}, 2.0),
    (SILENT4, {}, 0.5),
    (SILENT6, {}, 0.5),
    (UNREACH4, {}, 2.0),
    (UNREACH6, {}, 2.0),
    (SILENT4, {"count": 3, "interval": 0.05}, 0.5),
]


def check_scenarios(results, kind):
    up4, up6, silent4, silent6, unreach4, unreach6, silent_many = results
    for up in (up4, up6):
        assert up["ok"], up
        assert up["facts"]["socket"] == kind
        assert up["facts"]["sent"] == up["facts"]["replies"] == 1
        assert isinstance(up["facts"]["ttl"], int)
    for silent, ip in ((silent4, SILENT4), (silent6, SILENT6)):
        assert silent["reason"] == "timeout", silent
        assert silent["detail"] == (
            f"no echo reply from {ip} to 4 echo requests (16-byte payload, {kind} socket) "
            "within 0.5 s"
        )
        assert silent["duration_seconds"] < 1.0
    assert silent_many["facts"]["sent"] == 3 and silent_many["facts"]["replies"] == 0
    assert unreach4["reason"] == "unreachable", unreach4
    assert unreach4["detail"] == (
        f"{UNREACH4} is unreachable: ICMP network unreachable from 198.18.0.2"
    )
    assert unreach6["reason"] == "unreachable", unreach6
    assert unreach6["detail"] == (
        f"{UNREACH6} is unreachable: ICMP no route to destination from fd00:6a75::2"
    )
    assert unreach4["duration_seconds"] < 1.0 and unreach6["duration_seconds"] < 1.0


def test_raw_socket_in_a_namespace(netns):
    netns.set_ping_group_range("1 0")  # the kernel default: no ping sockets for anyone
    check_scenarios(netns.run(SCENARIOS), "raw")


def test_ping_socket_in_a_namespace(netns):
    netns.set_ping_group_range("0 0")  # root's group may use ping sockets
    check_scenarios(netns.run(SCENARIOS), "dgram")


def test_non_root_process_gets_permission_denied(netns):
    netns.set_ping_group_range("1 0")
    [result] = netns.run([("127.0.0.1", {}, 2.0)], uid=65534)
    assert result["reason"] == "permission_denied", result
    assert "uid 65534, gid 65534" in result["detail"]
    assert "(it is '1 0')" in result["detail"]
    assert "sysctl -w net.ipv4.ping_group_range='65534 65534'" in result["detail"]
    assert "AmbientCapabilities=CAP_NET_RAW" in result["detail"]
    netns.set_ping_group_range("65534 65534")  # the fix the detail suggests works
    [fixed] = netns.run([("127.0.0.1", {}, 2.0)], uid=65534)
    assert fixed["ok"] and fixed["facts"]["socket"] == "dgram", fixed
