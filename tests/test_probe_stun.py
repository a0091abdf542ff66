"""The stun probe against real coturn, the stand-in, and hostile peers.

Hostile answers are built with aioice (an independent STUN implementation)
or by hand, never with the codec under test.
"""

import asyncio
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aioice import stun as aio

import probes
from jupiterd.sandbox.peers import stun_standin as stun_standin_module
from jupiterd.sandbox.peers.coturn import coturn
from jupiterd.sandbox.peers.stun_standin import ask, attribute_layout, stun_standin
from probes import stun
from tests.conftest import need
from tests.peers import hostile

Reason = probes.Reason


@pytest.fixture(scope="module")
def server():
    need("turnserver")
    with coturn() as c:
        yield c


def respond(txid: bytes, cls=aio.Class.RESPONSE, method=aio.Method.BINDING, **attrs) -> bytes:
    msg = aio.Message(method, cls, transaction_id=txid)
    for name, value in attrs.items():
        msg.attributes[name.replace("_", "-")] = value
    return bytes(msg)


def txid_of(request: bytes) -> bytes:
    return request[8:20]


def mapped_ok(request: bytes) -> bytes:
    return respond(txid_of(request), XOR_MAPPED_ADDRESS=("192.0.2.1", 4000))


async def run(target: str, timeout: float = 2.0, **options) -> probes.ProbeResult:
    return await probes.run("stun", target, options, timeout)


# --- real coturn ---------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_binding_against_coturn(server, transport):
    result = await run(server.target, transport=transport)
    assert result.ok, result
    assert result.reason == Reason.OK
    host, port = result.facts["mapped_address"].rsplit(":", 1)
    assert host == "127.0.0.1" and 1024 <= int(port) <= 65535
    assert result.facts["software"].startswith("Coturn-4.")
    assert result.facts["requests_sent"] == 1
    assert "rfc3489" not in result.facts
    assert f"over {transport.upper()}" in result.detail
    assert "binding" in result.phases


async def test_software_option_is_accepted_by_coturn(server):
    result = await run(server.target, software=True)
    assert result.ok, result


async def test_software_option_sends_software():
    seen: list[bytes] = []

    def reply(data: bytes) -> bytes:
        seen.append(data)
        return mapped_ok(data)

    async with hostile.udp_responder(reply) as (host, port):
        assert (await run(f"{host}:{port}")).ok
        assert (await run(f"{host}:{port}", software="true")).ok
    bare, with_software = (aio.parse_message(d) for d in seen)
    assert len(seen[0]) == 20 and bare.attributes == {}
    assert with_software.attributes == {"SOFTWARE": "jupiterd"}


def test_cli_probe_against_coturn(server):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "jupiterd",
            "probe",
            "stun",
            server.target,
            "--set",
            "transport=tcp",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OK   stun") and "over TCP" in out.stdout


# --- the stand-in ----------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_binding_against_the_standin(transport):
    async with stun_standin() as standin:
        result = await run(standin.target, transport=transport)
    assert result.ok, result
    assert result.facts["mapped_address"].startswith("127.0.0.1:")
    assert result.facts["software"] == "jupiterd STUN stand-in"


async def test_standin_binding_layout_matches_coturn(server):
    request = struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, b"x" * 12)
    real = ask(server.host, server.port, request)
    async with stun_standin() as standin:
        fake = await asyncio.to_thread(ask, standin.host, standin.port, request)
    assert attribute_layout(fake) == attribute_layout(real)
    assert aio.parse_message(fake).attributes["XOR-MAPPED-ADDRESS"][0] == "127.0.0.1"


# --- hostile peers -----------------------------------------------------------------


async def test_closed_udp_port_is_refused():
    async with hostile.closed_port() as (host, port):
        result = await run(f"{host}:{port}")
    assert result.reason == Reason.REFUSED, result
    assert "ICMP port unreachable" in result.detail
    assert result.duration_seconds < 1.0


async def test_closed_tcp_port_is_refused():
    async with hostile.closed_port() as (host, port):
        result = await run(f"{host}:{port}", transport="tcp")
    assert result.reason == Reason.REFUSED, result


async def test_silent_udp_retransmits_only_within_the_budget():
    seen: list[bytes] = []

    def note(data: bytes) -> bytes:
        seen.append(data)
        return b""

    async with hostile.udp_responder(note) as (host, port):
        started = time.monotonic()
        result = await run(f"{host}:{port}", timeout=1.0, rto=0.08)
        took = time.monotonic() - started
    # Sends at 0, 0.08, 0.24 and 0.56 s; the next (1.2 s) is past the budget.
    assert result.reason == Reason.TIMEOUT, result
    assert result.facts["requests_sent"] == 4 == len(seen)
    assert len(set(seen)) == 1  # retransmissions repeat the request byte for byte
    assert "4 requests sent" in result.detail and "over UDP" in result.detail
    assert took < 1.5


async def test_no_retransmission_that_cannot_be_answered():
    async with hostile.silent_udp() as (host, port):
        result = await run(f"{host}:{port}", timeout=0.3, rto=0.5)
    assert result.reason == Reason.TIMEOUT
    assert result.facts["requests_sent"] == 1


async def test_silent_tcp_times_out_without_retransmitting():
    async with hostile.silent_tcp() as (host, port):
        result = await run(f"{host}:{port}", timeout=0.5, transport="tcp")
    assert result.reason == Reason.TIMEOUT, result
    assert "over TCP" in result.detail
    assert result.facts["requests_sent"] == 1
    assert result.duration_seconds < 1.0


async def test_random_bytes_over_udp_are_a_protocol_error():
    async with hostile.udp_responder(lambda d: hostile.garbage(64)) as (host, port):
        result = await run(f"{host}:{port}", timeout=0.5, rto=0.1)
    assert result.reason == Reason.PROTOCOL_ERROR, result
    assert "got 3 malformed replies" in result.detail and "64 bytes b" in result.detail


async def test_random_bytes_over_tcp_fail_at_once():
    async with hostile.tcp_responder(lambda d: hostile.garbage(64), close=False) as (host, port):
        result = await run(f"{host}:{port}", timeout=2.0, transport="tcp")
    assert result.reason == Reason.PROTOCOL_ERROR, result
    assert "expected a STUN response" in result.detail
    assert result.duration_seconds < 1.0


async def test_http_over_tcp_is_shown_escaped():
    reply = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    async with hostile.tcp_responder(lambda d: reply) as (host, port):
        result = await run(f"{host}:{port}", transport="tcp")
    assert result.reason == Reason.PROTOCOL_ERROR
    assert "b'HTTP/1.1 400 Bad Req" in result.detail
    assert "\r" not in result.detail


async def test_echo_service_is_named():
    async with hostile.udp_responder(lambda d: d) as (host, port):
        result = await run(f"{host}:{port}", timeout=0.4, rto=0.1)
    assert result.reason == Reason.PROTOCOL_ERROR
    assert "echoed our request back" in result.detail


async def test_wrong_transaction_id_is_ignored():
    def other(data: bytes) -> bytes:
        return respond(bytes(12), XOR_MAPPED_ADDRESS=("192.0.2.1", 4000))

    async with hostile.udp_responder(other) as (host, port):
        result = await run(f"{host}:{port}", timeout=0.4, rto=0.1)
    assert result.reason == Reason.TIMEOUT, result
    assert "ignored" in result.detail and "other transactions" in result.detail


async def test_wrong_cookie_is_ignored_then_the_right_answer_counts():
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)

    async def serve():
        # A copy of the right answer under a foreign cookie, then the answer.
        data, addr = await loop.sock_recvfrom(sock, 2048)
        good = mapped_ok(data)
        await loop.sock_sendto(sock, good[:4] + b"\xde\xad\xbe\xef" + good[8:], addr)
        await loop.sock_sendto(sock, good, addr)

    try:
        task = asyncio.create_task(serve())
        result = await run(f"127.0.0.1:{sock.getsockname()[1]}", timeout=1.0)
        await task
    finally:
        sock.close()
    assert result.ok, result
    assert result.facts["mapped_address"] == "192.0.2.1:4000"


async def test_truncated_udp_response_is_malformed():
    async with hostile.udp_responder(lambda d: mapped_ok(d)[:-4]) as (host, port):
        result = await run(f"{host}:{port}", timeout=0.4, rto=0.1)
    assert result.reason == Reason.PROTOCOL_ERROR, result
    assert "announces a 12-byte body but 8 follow" in result.detail


async def test_truncated_tcp_response_then_close_is_reset():
    async with hostile.tcp_responder(lambda d: mapped_ok(d)[:26]) as (host, port):
        result = await run(f"{host}:{port}", transport="tcp")
    assert result.reason == Reason.RESET, result
    assert "closed the TCP connection after 6 bytes" in result.detail


async def test_truncated_tcp_response_then_silence_times_out():
    async with hostile.tcp_responder(lambda d: mapped_ok(d)[:26], close=False) as (host, port):
        result = await run(f"{host}:{port}", transport="tcp", timeout=0.5)
    assert result.reason == Reason.TIMEOUT, result
    assert "got 6 bytes" in result.detail


async def test_tcp_close_without_answer_is_reset():
    async with hostile.tcp_responder(lambda d: b"") as (host, port):
        result = await run(f"{host}:{port}", transport="tcp")
    assert result.reason == Reason.RESET
    assert "without a byte" in result.detail


async def test_absurd_length_over_tcp_is_refused_without_reading():
    def absurd(data: bytes) -> bytes:
        return struct.pack("!HHI12s", 0x0101, 65532, 0x2112A442, txid_of(data))

    async with hostile.tcp_responder(absurd, close=False) as (host, port):
        result = await run(f"{host}:{port}", transport="tcp", timeout=2.0)
    assert result.reason == Reason.PROTOCOL_ERROR, result
    assert "65532-byte" in result.detail
    assert result.duration_seconds < 1.0


async def test_success_without_mapped_address_is_a_protocol_error():
    async with hostile.udp_responder(lambda d: respond(txid_of(d), SOFTWARE="x")) as (host, port):
        result = await run(f"{host}:{port}")
    assert result.reason == Reason.PROTOCOL_ERROR
    assert "without XOR-MAPPED-ADDRESS or MAPPED-ADDRESS" in result.detail


async def test_rfc3489_mapped_address_is_accepted_and_noted():
    def old(data: bytes) -> bytes:
        return respond(txid_of(data), MAPPED_ADDRESS=("198.51.100.7", 3479))

    async with hostile.udp_responder(old) as (host, port):
        result = await run(f"{host}:{port}")
    assert result.ok, result
    assert result.facts["rfc3489"] is True
    assert result.facts["mapped_address"] == "198.51.100.7:3479"
    assert "RFC 3489" in result.detail


async def test_ipv6_mapped_address_is_bracketed():
    def v6(data: bytes) -> bytes:
        return respond(txid_of(data), XOR_MAPPED_ADDRESS=("2001:db8::5", 3478))

    async with hostile.udp_responder(v6) as (host, port):
        result = await run(f"{host}:{port}")
    assert result.facts["mapped_address"] == "[2001:db8::5]:3478"


async def test_binding_error_response_is_unexpected():
    def error(data: bytes) -> bytes:
        return respond(txid_of(data), aio.Class.ERROR, ERROR_CODE=(420, "Unknown Attribute"))

    async with hostile.udp_responder(error) as (host, port):
        result = await run(f"{host}:{port}")
    assert result.reason == Reason.UNEXPECTED_RESPONSE
    assert "error 420 'Unknown Attribute'" in result.detail
    assert result.facts["error_code"] == 420


async def test_error_response_without_error_code():
    async with hostile.udp_responder(lambda d: respond(txid_of(d), aio.Class.ERROR)) as (h, p):
        result = await run(f"{h}:{p}")
    assert result.reason == Reason.PROTOCOL_ERROR
    assert "without an ERROR-CODE" in result.detail


async def test_malformed_xor_mapped_address_is_a_protocol_error():
    def bad(data: bytes) -> bytes:
        attr = struct.pack("!HHBBH", 0x0020, 8, 0, 7, 1) + b"\0" * 4
        return struct.pack("!HHI12s", 0x0101, len(attr), 0x2112A442, txid_of(data)) + attr

    async with hostile.udp_responder(bad) as (host, port):
        result = await run(f"{host}:{port}")
    assert result.reason == Reason.PROTOCOL_ERROR
    assert "malformed XOR-MAPPED-ADDRESS" in result.detail and "family 7" in result.detail


async def test_other_method_with_our_transaction_is_a_protocol_error():
    def allocate(data: bytes) -> bytes:
        return respond(txid_of(data), method=aio.Method.ALLOCATE, LIFETIME=600)

    async with hostile.udp_responder(allocate) as (host, port):
        result = await run(f"{host}:{port}")
    assert result.reason == Reason.PROTOCOL_ERROR
    assert "Allocate success response" in result.detail


async def test_late_first_answer_after_retransmission_is_accepted():
    count = 0

    def second(data: bytes) -> bytes:
        nonlocal count
        count += 1
        return mapped_ok(data) if count == 2 else b""

    async with hostile.udp_responder(second) as (host, port):
        result = await run(f"{host}:{port}", rto=0.05)
    assert result.ok, result
    assert result.facts["requests_sent"] == 2


@pytest.mark.parametrize(
    "options,key",
    [({"transport": "sctp"}, "transport"), ({"rto": "0"}, "rto"), ({"bogus": 1}, "bogus")],
)
def test_bad_options(options, key):
    with pytest.raises(probes.OptionError) as err:
        stun.Options.parse(options)
    assert err.value.key == key


async def test_probe_cpu_cost_against_coturn(server):
    """A generous upper bound on the probe's own CPU per Binding over UDP
    (coturn runs in another process, so process_time is the probe's)."""
    options = stun.Options()
    for _ in range(20):
        await stun.probe(server.target, options, 1.0)
    n = 300
    started = time.process_time()
    for _ in range(n):
        result = await stun.probe(server.target, options, 1.0)
        assert result.ok, result
    per_probe = (time.process_time() - started) / n
    assert per_probe < 0.5e-3, f"{per_probe * 1e6:.0f} us of CPU per stun probe"


async def test_standin_script_serves_until_sigterm():
    script = Path(stun_standin_module.__file__)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), "--host", "127.0.0.2", "--port", "0",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line.startswith(b"ready 127.0.0.2:"), line
        target = line.split()[1].decode()
        for transport in ("udp", "tcp"):
            result = await run(target, transport=transport)
            assert result.ok, result
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
