"""The turn probe against real coturn (long-term users and the REST API
secret), the stand-in, and scripted or hostile peers.

Scripted TURN answers are built and requests checked with aioice, an
independent STUN implementation, never with the codec under test.
"""

import asyncio
import base64
import hashlib
import hmac
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aioice import stun as aio
from aioice.turn import make_integrity_key

import probes
from jupiterd.sandbox.peers import coturn as coturn_module
from jupiterd.sandbox.peers.coturn import binding_answered, coturn
from jupiterd.sandbox.peers.stun_standin import ask, attribute_layout, stun_standin
from probes import turn
from tests.conftest import need
from tests.peers import hostile

Reason = probes.Reason
SECRET = "rest-shared-secret-0123"


@pytest.fixture(scope="module")
def server():
    need("turnserver")
    with coturn(user=("alice", "correct horse")) as c:
        yield c


@pytest.fixture(scope="module")
def rest():
    need("turnserver")
    with coturn(secret=SECRET) as c:
        yield c


async def run(target: str, timeout: float = 2.0, **options) -> probes.ProbeResult:
    return await probes.run("turn", target, options, timeout)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# --- real coturn: the 401 challenge -----------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_challenge_without_credentials(server, transport):
    result = await run(server.target, transport=transport)
    assert result.ok, result
    assert "challenged our Allocate request with 401" in result.detail
    assert result.facts["realm"] == server.realm
    assert result.facts["nonce_length"] == 16
    assert result.facts["software"].startswith("Coturn-4.")
    assert result.facts["requests_sent"] == 1
    assert "relayed_address" not in result.facts


# --- real coturn: allocations --------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_allocation_with_username_and_password(server, transport):
    result = await run(
        server.target, transport=transport, username=server.user, password=server.password
    )
    assert result.ok, result
    low, high = server.relay_ports
    host, port = result.facts["relayed_address"].rsplit(":", 1)
    assert host == server.host and low <= int(port) <= high
    assert result.facts["mapped_address"] == result.facts["local_address"]
    assert result.facts["lifetime"] == 600
    assert result.facts["realm"] == server.realm
    assert result.facts["requests_sent"] == 3
    assert {"challenge", "allocate", "refresh"} <= result.phases.keys()
    assert "and released it" in result.detail and "user 'alice'" in result.detail
    assert result.facts["released"] is True


def allocate_from(sock: socket.socket, user: str, password: str) -> aio.Message:
    """Allocate on this socket's 5-tuple with aioice: answer the challenge,
    return the final answer (or the first one when it is not a 401)."""

    def exchange(msg: aio.Message) -> aio.Message:
        sock.send(bytes(msg))
        return aio.parse_message(sock.recv(4096))

    first = exchange(
        aio.Message(
            aio.Method.ALLOCATE, aio.Class.REQUEST, attributes={"REQUESTED-TRANSPORT": 0x11000000}
        )
    )
    if first.error_code != 401:
        return first
    realm, nonce = first.attributes["REALM"], first.attributes["NONCE"]
    signed = aio.Message(
        aio.Method.ALLOCATE,
        aio.Class.REQUEST,
        attributes={
            "REQUESTED-TRANSPORT": 0x11000000,
            "USERNAME": user,
            "REALM": realm,
            "NONCE": nonce,
        },
    )
    signed.add_message_integrity(make_integrity_key(user, realm, password))
    return exchange(signed)


def udp_socket(server, local_port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    sock.bind((server.host, local_port))
    sock.connect((server.host, server.port))
    return sock


async def test_a_leaked_allocation_blocks_its_5_tuple(server):
    """The negative control of the release check below: an allocation that
    is not released makes a second Allocate on its 5-tuple fail with 437."""
    with udp_socket(server) as sock:
        first = allocate_from(sock, server.user, server.password)
        assert first.message_class == aio.Class.RESPONSE, first
        again = allocate_from(sock, server.user, server.password)
    assert again.error_code == 437, again


def wait_for_log(server, marker: str, limit: float) -> None:
    end = time.monotonic() + limit
    while marker not in server.log() and time.monotonic() < end:
        time.sleep(0.1)


async def test_the_allocation_is_released(server):
    result = await run(server.target, username=server.user, password=server.password)
    assert result.ok, result
    local = result.facts["local_address"]
    # coturn deletes a lifetime-0 allocation when its one-second timer fires.
    marker = f"remote {local}, reason: allocation timeout"
    await asyncio.to_thread(wait_for_log, server, marker, 5.0)
    assert marker in server.log()
    assert "lifetime=0" in server.log()
    # The same 5-tuple can allocate again: nothing is left on it.
    with udp_socket(server, port_of(local)) as sock:
        again = allocate_from(sock, server.user, server.password)
    assert again.message_class == aio.Class.RESPONSE, again
    assert "XOR-RELAYED-ADDRESS" in again.attributes


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_allocation_with_rest_secret(rest, transport):
    before = int(time.time())
    result = await run(rest.target, transport=transport, secret=SECRET, user="probe-7", ttl="60")
    assert result.ok, result
    assert "relayed_address" in result.facts
    expiry = int(result.detail.split("user '")[1].split(":")[0])
    assert before + 60 <= expiry <= int(time.time()) + 60
    assert ":probe-7'" in result.detail


async def test_rest_default_user(rest):
    result = await run(rest.target, secret=SECRET)
    assert result.ok, result
    assert ":jupiterd'" in result.detail


def test_rest_credentials_follow_coturn_readme():
    username, password = turn.rest_credentials("s3cret", "jupiterd", 600, now=1_700_000_000)
    assert username == "1700000600:jupiterd"
    mac = hmac.new(b"s3cret", b"1700000600:jupiterd", hashlib.sha1).digest()
    assert password == base64.b64encode(mac).decode()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_wrong_password_is_auth_failed(server, transport):
    wrong = "Tr0ub4dor&3-not-it"
    result = await run(server.target, transport=transport, username=server.user, password=wrong)
    assert result.reason == Reason.AUTH_FAILED, result
    assert "user 'alice'" in result.detail and "401" in result.detail
    assert result.facts["error_code"] == 401
    for text in (result.detail, result.summary(), repr(result), str(result.to_dict())):
        assert wrong not in text


async def test_wrong_secret_is_auth_failed(rest):
    wrong = "not-the-shared-secret-42"
    result = await run(rest.target, secret=wrong)
    assert result.reason == Reason.AUTH_FAILED, result
    assert "401" in result.detail
    for text in (result.detail, result.summary(), repr(result), str(result.to_dict())):
        assert wrong not in text and SECRET not in text


async def test_static_user_against_a_rest_server_is_auth_failed(rest):
    result = await run(rest.target, username="alice", password="correct horse")
    assert result.reason == Reason.AUTH_FAILED, result


# --- the stand-in ---------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_challenge_against_the_standin(transport):
    async with stun_standin(realm="standin.test") as standin:
        result = await run(standin.target, transport=transport)
    assert result.ok, result
    assert result.facts["realm"] == "standin.test"
    assert result.facts["nonce_length"] == 16


async def test_standin_challenge_layout_matches_coturn(server):
    request = aio.Message(
        aio.Method.ALLOCATE, aio.Class.REQUEST, attributes={"REQUESTED-TRANSPORT": 0x11000000}
    )
    request.add_fingerprint()
    real = ask(server.host, server.port, bytes(request))
    async with stun_standin() as standin:
        fake = await asyncio.to_thread(ask, standin.host, standin.port, bytes(request))
    assert attribute_layout(fake) == attribute_layout(real)
    real_msg, fake_msg = aio.parse_message(real), aio.parse_message(fake)
    assert fake_msg.attributes["ERROR-CODE"] == real_msg.attributes["ERROR-CODE"]
    assert len(fake_msg.attributes["NONCE"]) == len(real_msg.attributes["NONCE"])


# --- scripted and hostile peers -----------------------------------------------------

REALM = "scripted.test"
USER, PASSWORD = "bob", "hunter2-long-enough"
KEY = make_integrity_key(USER, REALM, PASSWORD)


def answer(req: aio.Message, cls: aio.Class, key: bytes | None = None, **attrs) -> bytes:
    msg = aio.Message(req.message_method, cls, transaction_id=req.transaction_id)
    for name, value in attrs.items():
        msg.attributes[name.replace("_", "-")] = value
    if key is not None:
        msg.add_message_integrity(key)
    else:
        msg.add_fingerprint()
    return bytes(msg)


def challenge(req: aio.Message, nonce: bytes = b"0123456789abcdef") -> bytes:
    return answer(req, aio.Class.ERROR, ERROR_CODE=(401, "Unauthorized"), NONCE=nonce, REALM=REALM)


def allocated(req: aio.Message, key: bytes | None = KEY) -> bytes:
    return answer(
        req,
        aio.Class.RESPONSE,
        key,
        XOR_RELAYED_ADDRESS=("192.0.2.9", 50000),
        XOR_MAPPED_ADDRESS=("192.0.2.8", 40000),
        LIFETIME=600,
    )


def refreshed(req: aio.Message) -> bytes:
    return answer(req, aio.Class.RESPONSE, KEY, LIFETIME=0)


class Scripted:
    """A TURN server whose answers tests choose; it keeps what it was sent.

    ``allocate`` and ``refresh`` answer authenticated requests; unsigned
    ones get the 401 challenge unless ``first`` says otherwise."""

    def __init__(self, allocate=allocated, refresh=refreshed, first=challenge):
        self.allocate, self.refresh, self.first = allocate, refresh, first
        self.requests: list[aio.Message] = []

    def __call__(self, data: bytes) -> bytes:
        req = aio.parse_message(data)
        self.requests.append(req)
        if "MESSAGE-INTEGRITY" not in req.attributes:
            return self.first(req)
        assert req.check_message_integrity(KEY), "the probe signed with a wrong key"
        if req.message_method == aio.Method.ALLOCATE:
            return self.allocate(req)
        return self.refresh(req)

    def methods(self) -> list[str]:
        return [r.message_method.name for r in self.requests]


async def scripted(script: Scripted, timeout: float = 1.0, **options) -> probes.ProbeResult:
    options = {"username": USER, "password": PASSWORD, "rto": 0.1, **options}
    async with hostile.udp_responder(script) as (host, port):
        return await run(f"{host}:{port}", timeout=timeout, **options)


async def test_scripted_happy_path_sends_what_rfc_5766_asks():
    script = Scripted()
    result = await scripted(script)
    assert result.ok, result
    assert result.facts["relayed_address"] == "192.0.2.9:50000"
    assert result.facts["mapped_address"] == "192.0.2.8:40000"
    first, signed, release = script.requests
    assert first.attributes["REQUESTED-TRANSPORT"] == 0x11000000
    assert "USERNAME" not in first.attributes
    assert signed.attributes["USERNAME"] == USER
    assert signed.attributes["REALM"] == REALM
    assert signed.attributes["NONCE"] == b"0123456789abcdef"
    assert signed.transaction_id != first.transaction_id
    assert release.message_method == aio.Method.REFRESH
    assert release.attributes["LIFETIME"] == 0
    assert release.check_message_integrity(KEY)


async def test_stale_nonce_is_retried_once_with_the_new_nonce():
    seen = {"allocate": 0, "refresh": 0}

    def stale_then(ok, kind):
        def handler(req):
            seen[kind] += 1
            if seen[kind] == 1:
                return answer(
                    req,
                    aio.Class.ERROR,
                    ERROR_CODE=(438, "Stale Nonce"),
                    NONCE=f"fresh-{kind}".encode(),
                    REALM=REALM,
                )
            return ok(req)

        return handler

    script = Scripted(stale_then(allocated, "allocate"), stale_then(refreshed, "refresh"))
    result = await scripted(script)
    assert result.ok, result
    assert script.methods() == ["ALLOCATE", "ALLOCATE", "ALLOCATE", "REFRESH", "REFRESH"]
    assert script.requests[2].attributes["NONCE"] == b"fresh-allocate"
    assert script.requests[4].attributes["NONCE"] == b"fresh-refresh"
    assert result.facts["requests_sent"] == 5


async def test_wrong_nonce_twice_in_a_row_is_retried():
    # Seen from coturn under loss: 438 to the request and to its first retry.
    nonces = iter([b"n1", b"n2"])

    def wrong_twice(req):
        nonce = next(nonces, None)
        if nonce is None:
            return allocated(req)
        return answer(
            req, aio.Class.ERROR, ERROR_CODE=(438, "Wrong nonce"), NONCE=nonce, REALM=REALM
        )

    script = Scripted(allocate=wrong_twice)
    result = await scripted(script)
    assert result.ok, result
    assert script.methods() == ["ALLOCATE"] * 4 + ["REFRESH"]
    assert script.requests[3].attributes["NONCE"] == b"n2"


async def test_stale_nonce_forever_is_unexpected():
    def always_stale(req):
        return answer(
            req, aio.Class.ERROR, ERROR_CODE=(438, "Stale Nonce"), NONCE=b"n2", REALM=REALM
        )

    result = await scripted(Scripted(allocate=always_stale))
    assert result.reason == Reason.UNEXPECTED_RESPONSE, result
    assert "438" in result.detail


@pytest.mark.parametrize(
    "code,reason,hint",
    [
        (437, "Allocation Mismatch", "allocation mismatch"),
        (486, "Allocation Quota Reached", "quota"),
        (508, "Insufficient Capacity", "capacity"),
        (442, "Unsupported Transport Protocol", ""),
    ],
)
async def test_allocate_errors_are_unexpected_with_the_code(code, reason, hint):
    def refuse(req):
        return answer(req, aio.Class.ERROR, ERROR_CODE=(code, reason))

    script = Scripted(allocate=refuse)
    result = await scripted(script)
    assert result.reason == Reason.UNEXPECTED_RESPONSE, result
    assert f"error {code} '{reason}'" in result.detail and hint in result.detail
    assert result.facts["error_code"] == code
    # Nothing to release; a 437 (an allocation left on a reused port) is asked
    # again once from another port.
    tries = 2 if code == 437 else 1
    assert script.methods() == ["ALLOCATE", "ALLOCATE"] * tries


@pytest.mark.parametrize("code", [401, 431, 441])
async def test_credential_errors_are_auth_failed(code):
    def refuse(req):
        return answer(req, aio.Class.ERROR, ERROR_CODE=(code, "No"), NONCE=b"x", REALM=REALM)

    result = await scripted(Scripted(allocate=refuse))
    assert result.reason == Reason.AUTH_FAILED, result
    assert PASSWORD not in result.detail and PASSWORD not in repr(result)


async def test_unsigned_success_is_rejected_and_still_released():
    script = Scripted(allocate=lambda req: allocated(req, key=None))
    result = await scripted(script)
    assert result.reason == Reason.PROTOCOL_ERROR, result
    assert "MESSAGE-INTEGRITY" in result.detail
    assert script.methods()[-1] == "REFRESH"


async def test_success_signed_with_another_key_is_rejected():
    other = make_integrity_key(USER, REALM, "someone else")
    script = Scripted(allocate=lambda req: allocated(req, key=other))
    result = await scripted(script)
    assert result.reason == Reason.PROTOCOL_ERROR
    assert script.methods()[-1] == "REFRESH"


async def test_success_without_relayed_address_is_rejected_and_released():
    script = Scripted(allocate=lambda req: answer(req, aio.Class.RESPONSE, KEY, LIFETIME=600))
    result = await scripted(script)
    assert result.reason == Reason.PROTOCOL_ERROR, result
    assert "without XOR-RELAYED-ADDRESS" in result.detail
    assert script.methods()[-1] == "REFRESH"


async def test_refused_release_is_recorded_not_failed():
    # The Allocate proved the server alive; the release is only cleanup.
    def refuse(req):
        return answer(req, aio.Class.ERROR, ERROR_CODE=(500, "Server Error"))

    result = await scripted(Scripted(refresh=refuse))
    assert result.ok, result
    assert result.facts["released"] == "error 500"
    assert "got error 500 'Server Error'" in result.detail
    assert "expires by itself" in result.detail


async def test_release_whose_answer_was_lost_passes_on_437():
    # Under loss: the first release is processed, its answer lost; the
    # retransmission finds no allocation and gets 437. The Allocate proved
    # the server alive, so the probe passes and records it.
    sends = []

    def lost_then_437(req):
        sends.append(req.transaction_id)
        if len(sends) == 1:
            return b""  # the answer lost on the way back
        return answer(req, aio.Class.ERROR, ERROR_CODE=(437, "Allocation Mismatch"))

    script = Scripted(refresh=lost_then_437)
    result = await scripted(script)
    assert result.ok, result
    assert result.facts["released"] == "error 437"
    assert "error 437 'Allocation Mismatch' (a retransmission" in result.detail
    assert script.methods() == ["ALLOCATE", "ALLOCATE", "REFRESH", "REFRESH"]
    assert sends[0] == sends[1]  # a retransmission, not a new transaction


async def test_unanswered_release_passes_within_the_budget():
    script = Scripted(refresh=lambda req: b"")
    result = await scripted(script, timeout=2.0)
    assert result.ok, result
    assert result.facts["released"] == "unanswered"
    assert "the release went unanswered" in result.detail
    assert result.facts["relayed_address"] == "192.0.2.9:50000"
    # The release waits RELEASE_RTOS initial RTOs (0.4 s at rto 0.1), not the
    # rest of the 2 s budget: sends at 0, 0.1 and 0.3 s (then 0.7 and 1.5 s).
    assert script.methods().count("REFRESH") == 3


async def test_open_relay_is_reported_and_released():
    script = Scripted(
        first=lambda req: (
            allocated(req, key=None)
            if req.attributes.get("REQUESTED-TRANSPORT")
            else answer(req, aio.Class.RESPONSE, LIFETIME=0)
        )
    )
    async with hostile.udp_responder(script) as (host, port):
        result = await run(f"{host}:{port}", timeout=1.0)
    assert result.reason == Reason.UNEXPECTED_RESPONSE, result
    assert "open relay" in result.detail and "released it" in result.detail
    assert script.methods() == ["ALLOCATE", "REFRESH"]
    assert script.requests[1].attributes["LIFETIME"] == 0


async def test_other_error_instead_of_challenge():
    def bad(req):
        return answer(req, aio.Class.ERROR, ERROR_CODE=(400, "Bad Request"))

    async with hostile.udp_responder(Scripted(first=bad)) as (host, port):
        result = await run(f"{host}:{port}")
    assert result.reason == Reason.UNEXPECTED_RESPONSE
    assert "error 400 'Bad Request' instead of the 401 challenge" in result.detail


async def test_challenge_without_nonce_is_a_protocol_error():
    def bare(req):
        return answer(req, aio.Class.ERROR, ERROR_CODE=(401, "Unauthorized"), REALM=REALM)

    async with hostile.udp_responder(Scripted(first=bare)) as (host, port):
        result = await run(f"{host}:{port}")
    assert result.reason == Reason.PROTOCOL_ERROR
    assert "without NONCE" in result.detail


async def test_stale_allocation_on_a_reused_port_is_retried_from_another_port():
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    sources: list[tuple[str, int]] = []

    async def serve():
        # 437 to the first port (a stale allocation there), 401 to the next.
        for reply in (
            lambda req: answer(req, aio.Class.ERROR, ERROR_CODE=(437, "Mismatched allocation")),
            challenge,
        ):
            data, addr = await loop.sock_recvfrom(sock, 4096)
            sources.append(addr)
            await loop.sock_sendto(sock, reply(aio.parse_message(data)), addr)

    try:
        task = asyncio.create_task(serve())
        result = await run(f"127.0.0.1:{sock.getsockname()[1]}")
        await task
    finally:
        sock.close()
    assert result.ok, result
    assert result.facts["stale_port_retried"] is True
    assert result.facts["requests_sent"] == 2
    assert sources[0] != sources[1]
    assert result.facts["local_address"] == f"127.0.0.1:{sources[1][1]}"


async def test_allocation_left_on_a_reused_port_is_retried_from_another_port():
    # The challenge passes, the authenticated Allocate meets an allocation an
    # earlier probe on the same port left (its release went unanswered): 437.
    seen: list[str] = []

    def left_over_then_ok(req):
        seen.append(req.transaction_id)
        if len(seen) == 1:
            return answer(req, aio.Class.ERROR, ERROR_CODE=(437, "Allocation mismatch"))
        return allocated(req)

    script = Scripted(allocate=left_over_then_ok)
    result = await scripted(script)
    assert result.ok, result
    assert result.facts["stale_port_retried"] is True
    assert script.methods() == ["ALLOCATE", "ALLOCATE", "ALLOCATE", "ALLOCATE", "REFRESH"]
    assert result.facts["released"] is True


async def test_silent_udp_times_out():
    async with hostile.silent_udp() as (host, port):
        result = await run(f"{host}:{port}", timeout=0.5, rto=0.1)
    assert result.reason == Reason.TIMEOUT
    assert "Allocate request" in result.detail
    assert result.facts["requests_sent"] == 3


async def test_closed_udp_port_is_refused():
    async with hostile.closed_port() as (host, port):
        result = await run(f"{host}:{port}")
    assert result.reason == Reason.REFUSED


async def test_random_bytes_are_a_protocol_error():
    async with hostile.udp_responder(lambda d: hostile.garbage(48)) as (host, port):
        result = await run(f"{host}:{port}", timeout=0.4, rto=0.1)
    assert result.reason == Reason.PROTOCOL_ERROR


async def test_silent_tcp_times_out():
    async with hostile.silent_tcp() as (host, port):
        result = await run(f"{host}:{port}", timeout=0.4, transport="tcp")
    assert result.reason == Reason.TIMEOUT
    assert "over TCP" in result.detail


async def test_absurd_length_over_tcp():
    def absurd(data: bytes) -> bytes:
        return struct.pack("!HHI12s", 0x0113, 65535 - 3, 0x2112A442, data[8:20])

    async with hostile.tcp_responder(absurd, close=False) as (host, port):
        result = await run(f"{host}:{port}", transport="tcp")
    assert result.reason == Reason.PROTOCOL_ERROR
    assert "65532-byte" in result.detail


# --- options -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options,key,needle",
    [
        ({"password": "x"}, "password", "'password' needs option 'username'"),
        ({"username": "x"}, "username", "'username' needs option 'password'"),
        ({"secret": "s", "username": "u", "password": "p"}, "secret", "exclude each other"),
        ({"secret": "s", "password": "p"}, "secret", "exclude each other"),
        ({"ttl": "0"}, "ttl", "greater than 0"),
        ({"user": ""}, "user", "at least 1"),
        ({"transport": "tls"}, "transport", "'udp' or 'tcp'"),
        ({"nope": 1}, "nope", "unknown option"),
    ],
)
def test_bad_option_combinations(options, key, needle):
    with pytest.raises(probes.OptionError) as err:
        turn.Options.parse(options)
    assert err.value.key == key
    assert needle in str(err.value)
    for value in options.values():
        if isinstance(value, str) and len(value) > 1:
            assert value not in str(err.value)


def test_secrets_stay_out_of_reprs():
    opts = turn.Options.parse({"secret": "very-secret-value", "ttl": "30"})
    assert opts.ttl == 30
    assert "very-secret-value" not in repr(opts) and "very-secret-value" not in str(opts)
    opts = turn.Options.parse({"username": "u", "password": "pw-value-123"})
    assert "pw-value-123" not in repr(opts)
    assert turn.credentials(opts) == ("u", "pw-value-123")


# --- the coturn peer itself -------------------------------------------------------------


def test_coturn_binds_loopback_only(server):
    ss = need("ss")
    out = subprocess.run([ss, "-H", "-a", "-n", "-p", "-t", "-u"], capture_output=True, text=True)
    mine = [line.split() for line in out.stdout.splitlines() if f"pid={server.proc.pid}," in line]
    assert mine, out.stdout
    for fields in mine:
        assert fields[4].startswith("127."), fields


def test_coturn_is_killed_when_the_body_fails():
    need("turnserver")
    with pytest.raises(RuntimeError, match="boom"), coturn() as c:
        proc = c.proc
        raise RuntimeError("boom")
    assert proc.poll() is not None


async def test_coturn_script_serves_until_sigterm():
    need("turnserver")
    script = Path(coturn_module.__file__)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), "--host", "127.0.0.1", "--secret", SECRET,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line.startswith(b"ready 127.0.0.1:"), line
        target = line.split()[1].decode()
        result = await run(target, secret=SECRET)
        assert result.ok, result
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    host, port = target.split(":")
    assert not binding_answered(host, int(port), 0.2)  # turnserver went with it
