"""The ``frp`` probe against the frps stand-in and hostile peers; the stand-in's
own wire behaviour; the message parser under hypothesis."""

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import probes
from jupiterd.sandbox.peers.frps_standin import Fault, FrpsStandin
from probes import frp, yamux
from probes.frp import MsgError
from probes.yamux import ACK, DATA, FIN, GO_AWAY, PING, RST, SYN, WINDOW_UPDATE
from tests.peers import hostile

Reason = probes.Reason
TOKEN = "correct-horse-battery"


def msg(type_byte: bytes, doc: object) -> bytes:
    body = json.dumps(doc, separators=(",", ":")).encode()
    return type_byte + struct.pack(">q", len(body)) + body


def mux_reply(payload: bytes) -> bytes:
    """frps under yamux: the stream's ACK, then the payload as stream data."""
    return (
        yamux.encode(WINDOW_UPDATE, ACK, 1, yamux.FRP_WINDOW_DELTA)
        + yamux.encode(DATA, 0, 1, len(payload))
        + payload
    )


async def run(target: str, timeout: float = 2.0, **options: object) -> probes.ProbeResult:
    return await probes.run("frp", target, options, timeout)


def assert_secret_absent(result: probes.ProbeResult, secret: str = TOKEN) -> None:
    text = json.dumps(result.to_dict()) + repr(result)
    assert secret not in text


# --- against the stand-in ---------------------------------------------------------

MODES = [
    pytest.param(dict(tls=False, mux=True), id="plain-mux"),
    pytest.param(dict(tls=False, mux=False), id="plain-nomux"),
    pytest.param(dict(tls=True, tls_prefix=True, mux=True), id="tls-prefix-mux"),
    pytest.param(dict(tls=True, tls_prefix=False, mux=True), id="tls-noprefix-mux"),
    pytest.param(dict(tls=True, tls_prefix=True, mux=False), id="tls-prefix-nomux"),
    pytest.param(dict(tls=True, tls_prefix=False, mux=False), id="tls-noprefix-nomux"),
]


@pytest.mark.parametrize("mode", MODES)
async def test_login_with_the_right_token(mode):
    async with FrpsStandin(token=TOKEN, tcp_mux=mode["mux"]) as frps:
        before = int(time.time())
        result = await run(frps.target, token=TOKEN, **mode)
    assert result.ok, result
    assert result.reason == Reason.OK
    assert "accepted the login" in result.detail
    assert result.facts["frps_version"] == "0.70.1"
    assert result.facts["tls"] is mode["tls"] and result.facts["mux"] is mode["mux"]
    assert len(result.facts["run_id"]) == 16
    assert {"connect", "login"} <= result.phases.keys()
    assert ("tls" in result.phases) is mode["tls"]
    assert_secret_absent(result)

    (login,) = frps.logins
    assert login.accepted and login.msg_type == "o"
    assert login.tls is mode["tls"]
    assert login.custom_tls_byte is (mode["tls"] and mode.get("tls_prefix", True))
    assert login.mux is mode["mux"] and login.stream_id == (1 if mode["mux"] else None)
    fields = login.fields
    # Never a run_id (it would take over a real frpc's session), nor a client_id.
    assert fields.get("run_id", "") == "" and fields.get("client_id", "") == ""
    assert login.run_id == result.facts["run_id"]  # frps made up a fresh one
    assert fields["hostname"] == "jupiterd-probe" and fields["version"] == "0.70.1"
    assert before <= fields["timestamp"] <= int(time.time())
    expected_key = hashlib.md5(f"{TOKEN}{fields['timestamp']}".encode()).hexdigest()
    assert fields["privilege_key"] == expected_key
    assert TOKEN.encode() not in login.raw


async def test_wrong_token_is_auth_failed_without_the_token_in_the_result():
    async with FrpsStandin(token="the-real-one") as frps:
        result = await run(frps.target, token=TOKEN)
    assert not result.ok
    assert result.reason == Reason.AUTH_FAILED
    assert "token in login doesn't match token from configuration" in result.detail
    assert result.facts["frps_version"] == "0.70.1"
    assert_secret_absent(result)
    assert_secret_absent(result, "the-real-one")
    assert frps.logins[0].error is not None and not frps.logins[0].accepted


async def test_no_token_against_a_protected_frps_is_alive_with_the_error_noted():
    async with FrpsStandin(token=TOKEN) as frps:
        result = await run(frps.target)
    assert result.ok, result
    assert "is alive" in result.detail and "token in login doesn't match" in result.detail
    assert result.facts["login_error"] == "token in login doesn't match token from configuration"
    assert (
        frps.logins[0].fields["privilege_key"]
        == hashlib.md5(f"{frps.logins[0].fields['timestamp']}".encode()).hexdigest()
    )


async def test_no_token_against_an_open_frps_logs_in():
    async with FrpsStandin() as frps:
        result = await run(frps.target, user="ops")
    assert result.ok and "accepted the login" in result.detail
    assert frps.logins[0].fields["user"] == "ops"


async def test_hidden_error_with_a_token_is_rejected_with_a_hint():
    async with FrpsStandin(token="other", detailed_errors=False) as frps:
        result = await run(frps.target, token=TOKEN)
    assert result.reason == Reason.REJECTED
    assert '"register control error"' in result.detail
    assert "detailedErrorsToClient" in result.detail
    assert_secret_absent(result)


async def test_claimed_version_is_sent():
    async with FrpsStandin() as frps:
        result = await run(frps.target, version="0.61.0")
    assert result.ok
    assert frps.logins[0].fields["version"] == "0.61.0"


async def test_keepalive_ping_before_the_answer_is_acknowledged():
    fault = Fault(ping_before_reply=True)
    async with FrpsStandin(token=TOKEN, fault=fault, mux_write_timeout=1.0) as frps:
        result = await run(frps.target, token=TOKEN)
    assert result.ok, result
    assert frps.pings_answered == 1


async def test_mux_probe_against_frps_without_mux_is_reset_with_a_hint():
    async with FrpsStandin(tcp_mux=False) as frps:
        result = await run(frps.target, mux=True)
    assert result.reason == Reason.RESET
    assert "set mux=false" in result.detail
    assert frps.logins == []  # frps saw type byte 0x00: "message type error", closed


async def test_plain_probe_against_a_mux_frps_is_reset_with_a_hint():
    async with FrpsStandin() as frps:
        result = await run(frps.target, mux=False)
    assert result.reason == Reason.RESET
    assert "try mux=true" in result.detail


async def test_plain_probe_against_tls_force_is_reset_with_a_hint():
    async with FrpsStandin(tls_force=True) as frps:
        plain = await run(frps.target)
        tls = await run(frps.target, tls=True)
    assert plain.reason == Reason.RESET and "set tls=true" in plain.detail
    assert tls.ok, tls


async def test_stall_after_first_byte_times_out_within_budget():
    async with FrpsStandin(fault=Fault(stall_after_first_byte=True)) as frps:
        result = await run(frps.target, timeout=0.4)
    assert result.reason == Reason.TIMEOUT
    assert "during login" in result.detail
    assert result.duration_seconds < 1.5


async def test_silent_after_login_times_out():
    async with FrpsStandin(fault=Fault(silent_after_login=True)) as frps:
        result = await run(frps.target, timeout=0.4, tls=True)
    assert result.reason == Reason.TIMEOUT and "during login" in result.detail
    assert len(frps.logins) == 1


async def test_garbage_on_the_login_stream_is_a_protocol_error():
    async with FrpsStandin(fault=Fault(reply_stream_raw=b"HTTP/1.1 400 Bad Request\r\n")) as f:
        result = await run(f.target)
    assert result.reason == Reason.PROTOCOL_ERROR
    assert "0x48 'H'" in result.detail and "HTTP/1.1 400" in result.detail


async def test_wrong_yamux_version_from_frps_is_a_protocol_error():
    bad = b"\x01" + yamux.encode(WINDOW_UPDATE, ACK, 1, 0)[1:]
    async with FrpsStandin(fault=Fault(reply_raw=bad)) as frps:
        result = await run(frps.target)
    assert result.reason == Reason.PROTOCOL_ERROR
    assert "version byte is 1" in result.detail


# --- hostile peers ------------------------------------------------------------------


async def test_refused():
    async with hostile.closed_port() as (host, port):
        result = await run(f"{host}:{port}")
    assert result.reason == Reason.REFUSED and "during connect" in result.detail


async def test_silent_tcp_times_out_within_budget():
    async with hostile.silent_tcp() as (host, port):
        result = await run(f"{host}:{port}", timeout=0.3)
    assert result.reason == Reason.TIMEOUT and "during login" in result.detail
    assert result.duration_seconds < 1.0


async def test_silent_tcp_with_tls_times_out_during_tls():
    async with hostile.silent_tcp() as (host, port):
        result = await run(f"{host}:{port}", timeout=0.3, tls=True)
    assert result.reason == Reason.TIMEOUT and "during tls" in result.detail


async def test_tls_against_a_plain_responder_fails_cleanly():
    async with hostile.tcp_responder(lambda d: b"HTTP/1.0 400 Bad\r\n\r\n") as (host, port):
        result = await run(f"{host}:{port}", tls=True)
    assert result.reason in (Reason.TLS_ERROR, Reason.RESET)


async def test_immediate_close_is_reset():
    async with hostile.tcp_responder(lambda d: b"") as (host, port):
        result = await run(f"{host}:{port}")
    assert result.reason == Reason.RESET
    assert "before a LoginResp" in result.detail


@pytest.mark.parametrize("mux", [True, False])
async def test_random_bytes_are_a_protocol_error(mux):
    noise = b"\x80" + hostile.garbage(300)
    async with hostile.tcp_responder(lambda d: noise, close=False) as (host, port):
        result = await run(f"{host}:{port}", mux=mux)
    assert result.reason == Reason.PROTOCOL_ERROR
    assert "\\x80" in result.detail


@pytest.mark.parametrize("mux", [True, False])
async def test_truncated_login_resp_is_reset(mux):
    whole = msg(b"1", {"version": "0.70.1", "run_id": "0123456789abcdef"})
    cut = whole[:5]
    async with hostile.tcp_responder(lambda d: mux_reply(cut) if mux else cut) as (host, port):
        result = await run(f"{host}:{port}", mux=mux)
    assert result.reason == Reason.RESET
    assert "got 5 bytes" in result.detail and "\\x00" in result.detail


@pytest.mark.parametrize("length", [2**62, 2**63 - 1, -1, -(2**63), 10241])
@pytest.mark.parametrize("mux", [True, False])
async def test_absurd_int64_lengths_are_a_protocol_error(length, mux):
    head = b"1" + struct.pack(">q", length) + b"{}"
    async with hostile.tcp_responder(lambda d: mux_reply(head) if mux else head, close=False) as (
        host,
        port,
    ):
        result = await run(f"{host}:{port}", mux=mux)
    assert result.reason == Reason.PROTOCOL_ERROR
    assert f"message length is {length}, outside 0..10240" in result.detail


async def test_absurd_yamux_data_length_is_a_protocol_error():
    reply = yamux.encode(DATA, 0, 1, 0xFFFFFFFF) + b"1"
    async with hostile.tcp_responder(lambda d: reply, close=False) as (host, port):
        result = await run(f"{host}:{port}")
    assert result.reason == Reason.PROTOCOL_ERROR and "receive window" in result.detail


@pytest.mark.parametrize(
    "payload,needle",
    [
        (msg(b"2", {"proxy_name": "x"}), "0x32 '2', expected 0x31 '1'"),
        (msg(b"1", ["not", "an", "object"]), "JSON list, expected an object"),
        (b"1" + struct.pack(">q", 5) + b"{nope", "not JSON"),
        (msg(b"1", {"version": 7}), "field 'version' is a int"),
        (b"1" + struct.pack(">q", 3) + b"NaN", "not JSON"),
    ],
)
async def test_bad_login_resp_is_a_protocol_error(payload, needle):
    async with hostile.tcp_responder(lambda d: mux_reply(payload), close=False) as (host, port):
        result = await run(f"{host}:{port}")
    assert result.reason == Reason.PROTOCOL_ERROR
    assert needle in result.detail


@pytest.mark.parametrize(
    "reply,needle",
    [
        (yamux.encode(GO_AWAY, 0, 0, 1), "GoAway 1: protocol error"),
        (yamux.encode(GO_AWAY, 0, 0, 2), "GoAway 2: internal error"),
        (yamux.encode(WINDOW_UPDATE, ACK | RST, 1, 0), "yamux RST"),
        (yamux.encode(WINDOW_UPDATE, ACK | FIN, 1, 0), "yamux FIN"),
    ],
)
async def test_yamux_goaway_rst_and_fin_before_the_answer_are_reset(reply, needle):
    async with hostile.tcp_responder(lambda d: reply, close=False) as (host, port):
        result = await run(f"{host}:{port}")
    assert result.reason == Reason.RESET
    assert needle in result.detail


async def test_normal_goaway_then_answer_still_counts():
    reply = yamux.encode(GO_AWAY, 0, 0, 0) + mux_reply(msg(b"1", {"version": "0.70.1"}))
    async with hostile.tcp_responder(lambda d: reply, close=False) as (host, port):
        result = await run(f"{host}:{port}")
    assert result.ok and "accepted the login" in result.detail


async def test_server_opened_stream_is_a_protocol_error():
    reply = yamux.encode(WINDOW_UPDATE, SYN, 2, 0)
    async with hostile.tcp_responder(lambda d: reply, close=False) as (host, port):
        result = await run(f"{host}:{port}")
    assert result.reason == Reason.PROTOCOL_ERROR and "opened stream 2" in result.detail


async def test_ping_from_a_peer_is_answered_before_the_reply():
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(yamux.encode(PING, SYN, 0, 42))
        seen.append(await reader.readexactly(12))
        writer.write(mux_reply(msg(b"1", {"version": "0.70.1", "run_id": "r"})))
        await writer.drain()
        seen.append(await reader.read(65536))  # the probe's goodbye
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        result = await run(f"127.0.0.1:{port}")
        for _ in range(50):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.01)
    assert result.ok, result
    assert seen[0] == yamux.encode(PING, ACK, 0, 42)
    assert seen[1] == yamux.encode(WINDOW_UPDATE, FIN, 1, 0) + yamux.encode(GO_AWAY, 0, 0, 0)


async def test_a_peer_echoing_the_token_has_it_masked():
    reply = msg(b"1", {"version": "x", "error": f"bad token {TOKEN}"})
    async with hostile.tcp_responder(lambda d: mux_reply(reply), close=False) as (host, port):
        result = await run(f"{host}:{port}", token=TOKEN)
    assert result.reason == Reason.AUTH_FAILED
    assert "bad token ***" in result.detail
    assert_secret_absent(result)


# --- what the probe sends ------------------------------------------------------------


def test_privilege_key_matches_upstream_vector():
    # pkg/util/util/util_test.go TestGetAuthKey
    assert frp.privilege_key("1234", 1488720000) == "6df41a43725f0c770fd56379e12acf8c"


def test_login_message_bytes():
    raw = frp.login_message("1234", 1488720000, version="0.70.1", user=None)
    assert raw[:1] == b"o"
    (length,) = struct.unpack(">q", raw[1:9])
    assert length == len(raw) - 9
    body = raw[9:].decode()
    # Go's field order, no spaces, no empty omitempty fields, client_spec always present.
    assert body == (
        f'{{"version":"0.70.1","hostname":"jupiterd-probe","os":"{frp._GO_OS}",'
        f'"arch":"{frp._GO_ARCH}","privilege_key":"6df41a43725f0c770fd56379e12acf8c",'
        '"timestamp":1488720000,"client_spec":{}}'
    )


def test_options_hide_the_token_and_coerce_strings():
    opts = probes.get_kind("frp").parse_options(
        {"token": TOKEN, "tls": "true", "tls_prefix": "false", "mux": "0"}
    )
    assert TOKEN not in repr(opts) and TOKEN not in str(opts)
    assert opts.tls is True and opts.tls_prefix is False and opts.mux is False
    assert opts.version == "0.70.1"
    with pytest.raises(probes.OptionError, match="unknown option 'run_id'"):
        probes.get_kind("frp").parse_options({"run_id": "abc"})


# --- the message parser ---------------------------------------------------------------


def test_parse_msg_golib_pack_vector():
    # golib msg/json pack_test.go TestPack: type byte, int64(2), "{}"
    raw = b"1" + struct.pack(">q", 2) + b"{}"
    assert frp.parse_msg(raw, ord("1")) == ({}, 11)
    assert frp.parse_msg(raw + b"trailing", ord("1")) == ({}, 11)


@pytest.mark.parametrize("cut", range(11))
def test_parse_msg_waits_for_more(cut):
    raw = b"1" + struct.pack(">q", 2) + b"{}"
    assert frp.parse_msg(raw[:cut], ord("1")) is None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_parse_login_resp_random_bytes(raw):
    with contextlib.suppress(MsgError):
        frp.parse_login_resp(raw)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from([b"1", b"o", b"\x00"]),
    st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(0, 80)),
    st.one_of(
        st.binary(max_size=80),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
            lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids),
            max_leaves=8,
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
def test_fuzz_parse_login_resp_framed(type_byte, length, body):
    raw = type_byte + struct.pack(">q", length) + body
    try:
        parsed = frp.parse_login_resp(raw)
    except MsgError:
        return
    if parsed is not None:
        resp, used = parsed
        assert used <= len(raw) and all(isinstance(v, str) for v in resp.values())


def test_deeply_nested_json_is_a_msg_error():
    body = b"[" * 5000
    with pytest.raises(MsgError):
        frp.parse_msg(b"1" + struct.pack(">q", len(body)) + body, ord("1"))


# --- the stand-in's own wire behaviour (so the probe's tests mean something) -------------


async def _raw(frps: FrpsStandin, send: bytes, read_timeout: float = 2.0) -> bytes:
    """Send bytes, return everything frps sends until it closes (or the timeout)."""
    reader, writer = await asyncio.open_connection(frps.host, frps.port)
    writer.write(send)
    out = b""
    try:
        async with asyncio.timeout(read_timeout):
            while chunk := await reader.read(65536):
                out += chunk
    except TimeoutError:
        out += b"<open>"
    finally:
        writer.transport.abort()
    return out


def _login(token: str = "", **extra: object) -> bytes:
    ts = 1488720000
    doc = {"version": "0.70.1", "privilege_key": frp.privilege_key(token, ts), "timestamp": ts}
    doc.update(extra)
    return msg(b"o", doc)


async def test_standin_accepts_a_stream_with_frps_window_delta_and_answers_on_it():
    async with FrpsStandin(token="1234", detailed_errors=True) as frps:
        login = _login("wrong")
        out = await _raw(frps, yamux.ClientSession().open(login), read_timeout=0.5)
    ack = yamux.encode(WINDOW_UPDATE, ACK, 1, 6 * 1024 * 1024 - 256 * 1024)
    resp = b'{"version":"0.70.1","error":"token in login doesn\'t match token from configuration"}'
    body = b"1" + struct.pack(">q", len(resp)) + resp
    fin = yamux.encode(WINDOW_UPDATE, FIN, 1, 0)
    # ACK, Data header, body, then the stream's FIN; the session itself stays open.
    assert out == ack + yamux.encode(DATA, 0, 1, len(body)) + body + fin + b"<open>"


async def test_standin_closes_on_a_bad_yamux_version_without_go_away():
    async with FrpsStandin() as frps:
        out = await _raw(frps, b"\x01" + b"\x00" * 11)
    assert out == b""


async def test_standin_duplicate_syn_earns_a_protocol_go_away():
    syn = yamux.encode(WINDOW_UPDATE, SYN, 1, 0)
    async with FrpsStandin() as frps:
        out = await _raw(frps, syn + syn)
    assert out.endswith(yamux.encode(GO_AWAY, 0, 0, 1))


async def test_standin_closes_a_bad_first_message_silently():
    async with FrpsStandin(tcp_mux=False) as frps:
        assert await _raw(frps, b"o" + struct.pack(">q", 10241)) == b""
        assert await _raw(frps, b"o" + struct.pack(">q", -1)) == b""
        assert await _raw(frps, msg(b"o", [1, 2])) == b""
        assert await _raw(frps, msg(b"o", {"timestamp": "soon"})) == b""
        assert await _raw(frps, msg(b"h", {})) == b""  # a Ping is not a first message
    assert frps.logins == []


async def test_standin_first_message_deadline():
    async with FrpsStandin(tcp_mux=False, first_msg_timeout=0.2) as frps:
        started = time.monotonic()
        assert await _raw(frps, b"o\x00") == b""
    assert time.monotonic() - started < 1.5


async def test_standin_hidden_error_and_success_shapes():
    async with FrpsStandin(tcp_mux=False, token="1234", detailed_errors=False) as frps:
        bad = await _raw(frps, _login("nope"))
        good = await _raw(frps, _login("1234"), read_timeout=0.3)
    assert bad == msg(b"1", {"version": "0.70.1", "error": "register control error"})
    assert good.endswith(b"<open>")  # the control connection stays up
    resp = json.loads(good[9:-6])
    assert set(resp) == {"version", "run_id"} and len(resp["run_id"]) == 16


async def test_standin_login_with_a_live_run_id_replaces_that_control():
    """Why the probe never sends a run_id: frps hands the session over."""
    async with FrpsStandin(tcp_mux=False) as frps:
        reader, writer = await asyncio.open_connection(frps.host, frps.port)
        writer.write(_login())
        head = await reader.readexactly(9)
        first = json.loads(await reader.readexactly(struct.unpack(">q", head[1:])[0]))
        taken = await _raw(frps, _login(run_id=first["run_id"]), read_timeout=0.3)
        assert json.loads(taken[9:-6])["run_id"] == first["run_id"]
        assert await reader.read(1) == b""  # the first control was closed
        writer.transport.abort()
    assert frps.logins[1].replaced


async def test_standin_work_and_visitor_conns_get_upstream_errors():
    async with FrpsStandin(tcp_mux=False) as frps:
        work = await _raw(frps, msg(b"w", {"run_id": "abc"}))
        visitor = await _raw(frps, msg(b"v", {"proxy_name": "ssh"}))
    assert work == msg(b"s", {"error": "no client control found for run id [abc]"})
    assert visitor == msg(
        b"3", {"proxy_name": "ssh", "error": "custom listener for [ssh] doesn't exist"}
    )


async def test_standin_dashboard_healthz():
    async with FrpsStandin(dashboard=True) as frps:
        reader, writer = await asyncio.open_connection(frps.host, frps.dashboard_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await reader.read(65536)
        writer.close()
        result = await probes.run("tcp", f"{frps.host}:{frps.dashboard_port}", {}, 2.0)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(
        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    assert result.ok


async def test_standin_unpacks_as_an_address():
    async with FrpsStandin() as (host, port):
        result = await run(f"{host}:{port}")
    assert result.ok


def test_standin_script_mode_prints_ready_and_stops_on_sigterm():
    port = hostile.free_port()
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [
            sys.executable,
            str(root / "jupiterd/sandbox/peers/frps_standin.py"),
            "--port",
            str(port),
            "--token",
            "t",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == f"ready 127.0.0.1:{port}"
        ok = asyncio.run(run(f"127.0.0.1:{port}", token="t"))
        bad = asyncio.run(run(f"127.0.0.1:{port}", token="x"))
        assert ok.ok and bad.reason == Reason.AUTH_FAILED
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
