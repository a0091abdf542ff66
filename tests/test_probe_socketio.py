"""The socketio probe against real Socket.IO 4.x and 2.x (Node) and python-socketio
servers, and against hostile peers."""

import asyncio
import contextlib
import ssl
import struct
import subprocess
import sys

import pytest

import probes
from probes import socketio as sio_probe
from probes.options import OptionError
from probes.websocket import accept_for
from tests.conftest import need
from tests.peers import hostile
from tests.peers.socketio_servers import (
    SIGNALING_SCRIPT,
    node_sio_server,
    python_sio_server,
    python_sio_subprocess,
)

R = probes.Reason
TIMEOUT = 3.0
MODES = {
    "polling": {"transport": "polling"},
    "upgrade": {"transport": "websocket"},
    "direct": {"transport": "websocket", "upgrade": "false"},
}


async def run(target, timeout=TIMEOUT, **options):
    return await probes.run("socketio", str(target), options, timeout)


def node_fixture(**kwargs):
    @pytest.fixture(scope="module")
    def fixture():
        with node_sio_server(need("node"), **kwargs) as peer:
            yield peer

    return fixture


node4 = node_fixture(major=4)
node4_eio3 = node_fixture(major=4, allow_eio3=True)
node4_admin = node_fixture(major=4, namespace="/admin", token="s3cret-t0ken")
node4_path = node_fixture(major=4, path="/custom/")
node4_nows = node_fixture(major=4, websocket=False)
node2 = node_fixture(major=2)
node2_admin = node_fixture(major=2, namespace="/admin", token="s3cret-t0ken")
node2_root_token = node_fixture(major=2, token="s3cret-t0ken")
node2_nows = node_fixture(major=2, websocket=False)


@pytest.fixture
async def pysio():
    async with python_sio_server() as peer:
        yield peer


# --- Healthy sessions, and proof of the clean close -------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_socketio4(node4, mode):
    mark = node4.mark()
    result = await run(node4, **MODES[mode])
    assert result.ok, result
    f = result.facts
    assert (f["eio"], f["sio_protocol"], f["namespace"]) == (4, 5, "/")
    assert f["transport"] == MODES[mode]["transport"]
    assert f["sid_present"] is True and f["clean_close"] is True
    assert (f["ping_interval"], f["ping_timeout"], f["max_payload"]) == (25000, 20000, 1000000)
    assert f["upgrades"] == ([] if mode == "direct" else ["websocket"])
    assert {"handshake", "sio_connect", "close"} <= result.phases.keys()
    assert ("upgrade" in result.phases) == (mode == "upgrade")
    # The server saw a client disconnect at once, not a ping timeout 45 s later.
    await node4.wait_for("disconnect / client namespace disconnect", after=mark)
    await node4.wait_for("engine-close transport close", after=mark)


@pytest.mark.parametrize("mode", MODES)
async def test_socketio2(node2, mode):
    mark = node2.mark()
    result = await run(node2, **MODES[mode])
    assert result.ok, result
    assert (result.facts["eio"], result.facts["sio_protocol"]) == (3, 4)
    assert "Engine.IO v3" in result.detail
    assert "max_payload" not in result.facts
    await node2.wait_for("disconnect / client namespace disconnect", after=mark)
    await node2.wait_for("engine-close transport close", after=mark)


@pytest.mark.parametrize("mode", MODES)
async def test_python_socketio(pysio, mode):
    result = await run(pysio, **MODES[mode])
    assert result.ok, result
    assert (result.facts["eio"], result.facts["sio_protocol"]) == (4, 5)
    assert result.facts["clean_close"] is True
    line = await pysio.wait_for("disconnect / ", timeout=1.0)
    assert line == "disconnect / client disconnect"


@pytest.mark.parametrize("mode", MODES)
async def test_server_pings_before_the_connect_reply_are_answered(mode):
    # Socket.IO 4 pings every 100 ms and drops a client that does not answer within
    # 100 ms; its namespace middleware takes 500 ms. Only a probe that answers the pings
    # gets the CONNECT reply.
    with node_sio_server(
        need("node"), ping_interval_ms=100, ping_timeout_ms=100, connect_delay_ms=500
    ) as peer:
        result = await run(peer, **MODES[mode])
        assert result.ok, result
        assert result.facts["ping_interval"] == 100
        await peer.wait_for("disconnect / client namespace disconnect")


@pytest.fixture(scope="module")
def tls_server_context(tmp_path_factory):
    """A throwaway self-signed certificate: the probe does not verify certificates."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [need("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-subj", "/CN=localhost"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    return ctx


@pytest.mark.parametrize("mode", MODES)
async def test_tls(tls_server_context, mode):
    async with python_sio_server(ssl_context=tls_server_context) as peer:
        assert peer.url.startswith("https://")
        result = await run(peer, **MODES[mode])
        assert result.ok, result
        assert "tls" in result.phases
        wss = await run(f"wss://{peer.hostport}/socket.io/", **MODES[mode])
        assert wss.ok, wss


# --- Engine.IO revisions ------------------------------------------------------------------


async def test_eio3_against_socketio4_without_allow_eio3(node4):
    result = await run(node4, eio="3")
    assert result.reason == R.UNEXPECTED_RESPONSE
    assert "HTTP 400" in result.detail
    assert "code 5 'Unsupported protocol version'" in result.detail
    assert "use eio=4 or eio=auto" in result.detail


@pytest.mark.parametrize("mode", MODES)
async def test_eio3_against_socketio4_with_allow_eio3(node4_eio3, mode):
    mark = node4_eio3.mark()
    result = await run(node4_eio3, eio=3, **MODES[mode])
    assert result.ok, result
    assert (result.facts["eio"], result.facts["sio_protocol"]) == (3, 4)
    await node4_eio3.wait_for("disconnect / client namespace disconnect", after=mark)


async def test_eio4_pinned_against_socketio2(node2):
    result = await run(node2, eio="4", transport="polling")
    assert result.reason == R.UNEXPECTED_RESPONSE
    assert "asked for Engine.IO v4 but the server answered Engine.IO v3" in result.detail


async def test_eio3_pinned_against_socketio2(node2):
    result = await run(node2, eio="3")
    assert result.ok, result
    assert result.facts["eio"] == 3


async def test_eio3_against_python_socketio(pysio):
    result = await run(pysio, eio="3", transport="polling")
    assert result.reason == R.UNEXPECTED_RESPONSE
    assert "unsupported version of the Socket.IO or Engine.IO protocols" in result.detail
    assert "use eio=4 or eio=auto" in result.detail


# --- Path and namespace -------------------------------------------------------------------


async def test_custom_path(node4_path):
    assert (await run(node4_path, path="/custom/")).ok
    assert (await run(node4_path, path="/custom")).ok  # the trailing slash is added
    assert (await run(f"{node4_path.url}/custom/")).ok  # or taken from the target URL
    result = await run(node4_path)
    assert result.reason == R.UNEXPECTED_RESPONSE
    assert "HTTP 404" in result.detail and "no Socket.IO server at /socket.io/?" in result.detail


async def test_custom_path_python_socketio():
    async with python_sio_server(path="/signal/") as peer:
        assert (await run(peer, path="/signal/")).ok
        result = await run(peer, transport="polling")
        assert result.reason == R.UNEXPECTED_RESPONSE
        assert "no Socket.IO server at /socket.io/?" in result.detail


@pytest.mark.parametrize("mode", MODES)
async def test_custom_namespace_socketio4(node4_admin, mode):
    mark = node4_admin.mark()
    result = await run(
        node4_admin, namespace="/admin", auth='{"token":"s3cret-t0ken"}', **MODES[mode]
    )
    assert result.ok, result
    assert result.facts["namespace"] == "/admin"
    await node4_admin.wait_for("disconnect /admin client namespace disconnect", after=mark)


@pytest.mark.parametrize("mode,eio", [("polling", "auto"), ("upgrade", "auto"), ("direct", "3")])
async def test_custom_namespace_socketio2(node2_admin, mode, eio):
    # Socket.IO 2 takes auth from the namespace's query: 40/admin?token=...,
    mark = node2_admin.mark()
    result = await run(
        node2_admin, namespace="/admin", auth='{"token":"s3cret-t0ken"}', eio=eio, **MODES[mode]
    )
    assert result.ok, result
    assert result.facts["eio"] == 3
    await node2_admin.wait_for("disconnect /admin client namespace disconnect", after=mark)


async def test_direct_websocket_to_socketio2_cannot_guess_the_auth_form(node2_admin):
    # A direct WebSocket's framing does not tell Engine.IO 3 from 4, so eio=auto sends
    # the v5 CONNECT; the refusal says how to fix it.
    result = await run(
        node2_admin, namespace="/admin", auth='{"token":"s3cret-t0ken"}', **MODES["direct"]
    )
    assert result.reason == R.REJECTED
    assert "Not authorized" in result.detail and "eio=3" in result.detail
    assert result.facts["eio"] == 3


async def test_unknown_namespace(node4, node2, pysio):
    for peer, message in ((node4, "Invalid namespace"), (node2, "Invalid namespace")):
        result = await run(peer, namespace="/nope")
        assert result.reason == R.REJECTED, result
        assert f"namespace /nope (CONNECT_ERROR): {message}" in result.detail
    result = await run(pysio, namespace="/nope")
    assert result.reason == R.REJECTED
    assert "Unable to connect" in result.detail


async def test_custom_namespace_python_socketio():
    async with python_sio_server(namespace="/rtc") as peer:
        result = await run(peer, namespace="/rtc")
        assert result.ok, result
        assert await peer.wait_for("disconnect /rtc ") == "disconnect /rtc client disconnect"


# --- Auth ---------------------------------------------------------------------------------

SECRET = "s3cret-t0ken"


def assert_secret_hidden(result):
    assert SECRET not in result.detail
    assert SECRET not in repr(result) and SECRET not in str(result.to_dict())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("auth", [None, '{"token":"wrong"}'])
async def test_auth_refused_socketio4(node4_admin, mode, auth):
    mark = node4_admin.mark()
    options = {"auth": auth} if auth else {}
    result = await run(node4_admin, namespace="/admin", **options, **MODES[mode])
    assert result.reason == R.REJECTED, result
    assert "refused namespace /admin (CONNECT_ERROR): Not authorized" in result.detail
    await node4_admin.wait_for("connect-error /admin Not authorized", after=mark)
    # The probe still closed its Engine.IO session instead of leaving it to time out.
    await node4_admin.wait_for("engine-close transport close", after=mark)


@pytest.mark.parametrize("mode", MODES)
async def test_auth_refused_socketio2(node2_admin, mode):
    result = await run(node2_admin, namespace="/admin", auth='{"token":"nope"}', **MODES[mode])
    assert result.reason == R.REJECTED, result
    assert "Not authorized" in result.detail


async def test_auth_on_the_root_namespace_of_socketio2(node2_root_token):
    peer = node2_root_token
    ok = await run(peer, eio="3", auth=f'{{"token":"{SECRET}"}}')
    assert ok.ok, ok
    assert_secret_hidden(ok)
    # Without a token the server sends its handshake's "40" and then the middleware's
    # CONNECT_ERROR: the ping barrier makes the probe see the verdict.
    for mode in MODES:
        bad = await run(peer, eio="3", **MODES[mode])
        assert bad.reason == R.REJECTED, (mode, bad)
        assert "Not authorized" in bad.detail
    # eio=auto cannot put the token in the handshake query: say how to fix it.
    hint = await run(peer, auth=f'{{"token":"{SECRET}"}}', transport="polling")
    assert hint.reason == R.REJECTED
    assert "set eio=3" in hint.detail
    assert_secret_hidden(hint)


@pytest.mark.parametrize("mode", MODES)
async def test_auth_python_socketio(mode):
    async with python_sio_server(token=SECRET) as peer:
        ok = await run(peer, auth={"token": SECRET}, **MODES[mode])
        assert ok.ok, ok
        assert_secret_hidden(ok)
        bad = await run(peer, auth='{"token":"wrong"}', **MODES[mode])
        assert bad.reason == R.REJECTED
        assert "Not authorized" in bad.detail
        assert await peer.wait_for("connect-error / ") == "connect-error / Not authorized"


# --- Servers without WebSocket ------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["node4_nows", "node2_nows"])
async def test_server_without_websocket(fixture, request):
    peer = request.getfixturevalue(fixture)
    result = await run(peer)
    assert result.reason == R.UNEXPECTED_RESPONSE
    assert "does not offer a WebSocket upgrade (upgrades: none)" in result.detail
    assert "set transport=polling" in result.detail
    assert (await run(peer, transport="polling")).ok
    direct = await run(peer, **MODES["direct"])
    assert direct.reason == R.UNEXPECTED_RESPONSE
    assert "code 0 'Transport unknown'" in direct.detail
    assert "set transport=polling" in direct.detail


async def test_python_socketio_without_websocket():
    # python-engineio still lists "websocket" in its upgrades, then refuses it.
    async with python_sio_server(websocket=False) as peer:
        for mode in ("upgrade", "direct"):
            result = await run(peer, **MODES[mode])
            assert result.reason == R.UNEXPECTED_RESPONSE
            assert "'Invalid transport'" in result.detail
            assert "set transport=polling" in result.detail
        assert (await run(peer, transport="polling")).ok


# --- The signaling server as the sandbox runs it --------------------------------------------


async def test_signaling_server_script():
    with python_sio_subprocess(host="127.0.0.2", token=SECRET) as peer:
        assert peer.host == "127.0.0.2"
        result = await run(peer.hostport, auth={"token": SECRET})
        assert result.ok, result
        await peer.wait_for("disconnect / client disconnect")


def test_signaling_server_exits_cleanly_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, str(SIGNALING_SCRIPT), "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("ready 127.0.0.1:")
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


# --- Options --------------------------------------------------------------------------------


def test_options():
    o = sio_probe.Options.parse({"eio": 3, "upgrade": "false", "headers": '{"Origin":"x"}'})
    assert (o.eio, o.upgrade, o.headers) == ("3", False, {"Origin": "x"})
    o = sio_probe.Options.parse({"auth": {"token": SECRET}, "path": "/x"})
    assert o.path == "/x/"
    assert SECRET not in repr(o) and SECRET not in str(o)


@pytest.mark.parametrize(
    "raw,needle",
    [
        ({"auth": '"just a string"'}, "option 'auth': Value error, must be a JSON object"),
        ({"auth": "[1]"}, "must be a JSON object"),
        ({"auth": "{nope"}, "must be a JSON object"),
        ({"eio": "5"}, "option 'eio'"),
        ({"transport": "sse"}, "option 'transport'"),
        ({"namespace": "admin"}, "option 'namespace'"),
        ({"namespace": "/a,b"}, "option 'namespace'"),
        ({"path": "socket.io"}, "option 'path'"),
        ({"headers": {"Host": "x"}}, "set by the probe itself"),
        ({"headers": {"X-A": "a\r\nB: c"}}, "invalid header"),
        ({"headers": "nope"}, "option 'headers'"),
        ({"bogus": 1}, "unknown option 'bogus'"),
    ],
)
def test_option_errors(raw, needle):
    with pytest.raises(OptionError) as err:
        sio_probe.Options.parse(raw)
    assert needle in str(err.value)
    assert SECRET not in str(err.value)


def test_auth_secret_never_in_option_errors():
    with pytest.raises(OptionError) as err:
        sio_probe.Options.parse({"auth": f'["{SECRET}"]'})
    assert SECRET not in str(err.value)


async def test_extra_headers_reach_the_server():
    seen = []

    def capture(data: bytes) -> bytes:
        seen.append(data)
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"

    async with hostile.tcp_responder(capture) as (host, port):
        result = await run(f"{host}:{port}", headers={"Origin": "https://app.example"})
    assert result.reason == R.UNEXPECTED_RESPONSE
    assert b"Origin: https://app.example\r\n" in seen[0]
    assert b"GET /socket.io/?EIO=4&transport=polling&b64=1 HTTP/1.1" in seen[0]


# --- Hostile peers --------------------------------------------------------------------------

OPEN = (
    '0{"sid":"fake","upgrades":["websocket"],"pingInterval":25000,'
    '"pingTimeout":20000,"maxPayload":1000000}'
)


def http(status: str, body: bytes, ctype: str = "text/plain") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def read_client_text(reader: asyncio.StreamReader) -> str:
    """One masked client frame's payload, as text (a close frame shows as 'close:<code>')."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    key = await reader.readexactly(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(await reader.readexactly(n)))
    if b0 & 0x0F == 0x8:
        return f"close:{struct.unpack_from('!H', body)[0]}"
    return body.decode()


def text_frame(text: str) -> bytes:
    data = text.encode()
    return bytes((0x81, len(data))) + data


@contextlib.asynccontextmanager
async def fake_engine(on_ws, *, accept=None, poll_reply=None):
    """A hostile Engine.IO v4 server: a valid polling handshake, ``ok`` to POSTs, a long
    poll that never answers; a WebSocket upgrade is answered 101 (with a wrong accept key
    if told) and then handed to ``on_ws``."""

    async def handle(reader, writer):
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                lines = head.split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                await reader.readexactly(int(headers.get("content-length", "0")))
                if headers.get("upgrade", "").lower() == "websocket":
                    key = headers["sec-websocket-key"]
                    writer.write(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                        + (accept or accept_for(key)).encode()
                        + b"\r\n\r\n"
                    )
                    await on_ws(reader, writer)
                    return
                if method == "POST":
                    writer.write(http("200 OK", b"ok"))
                elif "sid=" in target and poll_reply is not None:
                    writer.write(poll_reply)
                elif "sid=" in target:
                    await reader.read()  # a long poll with nothing to say
                    return
                else:
                    writer.write(http("200 OK", OPEN.encode()))
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def silent(reader, writer):
    await reader.read()


async def test_closed_port():
    async with hostile.closed_port() as (host, port):
        result = await run(f"{host}:{port}")
    assert result.reason == R.REFUSED


async def test_silent_tcp_times_out_within_budget():
    async with hostile.silent_tcp() as (host, port):
        result = await run(f"{host}:{port}", timeout=0.5)
    assert result.reason == R.TIMEOUT
    assert "no answer within 0.5 s during the Engine.IO handshake (long-polling)" in result.detail
    assert result.duration_seconds < 1.0


@pytest.mark.parametrize(
    "reply,reason,needles",
    [
        (
            http("200 OK", b"<!DOCTYPE html><html><body>Welcome</body></html>", "text/html"),
            R.PROTOCOL_ERROR,
            ["expected an open packet", "(text/html)", "<!DOCTYPE html>"],
        ),
        (
            http("200 OK", b'{"message":"no Route matched with those values"}', "application/json"),
            R.PROTOCOL_ERROR,
            ["expected an open packet", "no Route matched"],
        ),
        (
            http("502 Bad Gateway", b"<html><center>nginx</center></html>", "text/html"),
            R.UNEXPECTED_RESPONSE,
            ["HTTP 502 Bad Gateway", "nginx"],
        ),
        (
            http("400 Bad Request", b'{"code":3,"message":"Bad request"}', "application/json"),
            R.UNEXPECTED_RESPONSE,
            ["HTTP 400 Bad Request, Engine.IO error code 3 'Bad request'"],
        ),
        (
            http("200 OK", b'97:0{"sid":"abc","upgrades":[]}'),
            R.PROTOCOL_ERROR,
            ["claims 97 characters", "truncated payload"],
        ),
        (
            http("200 OK", b'1000000000000:0{"sid":"abc"}'),
            R.PROTOCOL_ERROR,
            ["absurd length prefix '1000000000", "during the Engine.IO handshake"],
        ),
        (
            http("200 OK", b'0{"upgrades":[]}'),
            R.PROTOCOL_ERROR,
            ["no 'sid' string"],
        ),
        (
            http("200 OK", b"\xff\xfe\x00garbage"),
            R.PROTOCOL_ERROR,
            ["not UTF-8"],
        ),
        (hostile.garbage(), R.PROTOCOL_ERROR, ["not an HTTP response"]),
        (
            b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n0{"sid"',
            R.RESET,
            ["closed the connection"],
        ),
    ],
    ids=[
        "html",
        "json",
        "502",
        "engine400",
        "truncated",
        "v3-absurd",
        "no-sid",
        "binary",
        "garbage",
        "short",
    ],
)
async def test_hostile_answers_to_the_handshake(reply, reason, needles):
    async with hostile.tcp_responder(lambda _: reply) as (host, port):
        result = await run(f"{host}:{port}", timeout=1.0)
    assert result.reason == reason, result
    for needle in needles:
        assert needle in result.detail, result.detail


async def test_wrong_sec_websocket_accept():
    async with fake_engine(silent, accept="dGhpcyBpcyBub3QgaXQ=") as target:
        result = await run(target, timeout=1.0)
    assert result.reason == R.PROTOCOL_ERROR
    assert "bad Sec-WebSocket-Accept" in result.detail
    assert "during the WebSocket upgrade" in result.detail


async def test_upgrade_probe_never_answered():
    async with fake_engine(silent) as target:
        result = await run(target, timeout=0.5)
    assert result.reason == R.TIMEOUT
    assert "during the WebSocket upgrade (2probe/3probe)" in result.detail
    assert result.duration_seconds < 1.0


async def test_session_unknown_to_the_next_request():
    lost = http("400 Bad Request", b'{"code":1,"message":"Session ID unknown"}')
    async with fake_engine(silent, poll_reply=lost) as target:
        result = await run(target, timeout=1.0, transport="polling")
    assert result.reason == R.UNEXPECTED_RESPONSE
    assert "long-polling: HTTP 400 Bad Request, Engine.IO error code 1" in result.detail
    assert "without sticky sessions" in result.detail


async def test_wrong_answer_to_the_upgrade_probe():
    async def wrong(reader, writer):
        assert await read_client_text(reader) == "2probe"
        writer.write(text_frame("3nope"))
        await reader.read()

    async with fake_engine(wrong) as target:
        result = await run(target, timeout=1.0)
    assert result.reason == R.UNEXPECTED_RESPONSE
    assert "expected '3probe' in answer to '2probe', got '3nope'" in result.detail


async def test_server_that_ignores_the_close_does_not_make_the_probe_late():
    got = []

    async def ignores_close(reader, writer):
        assert await read_client_text(reader) == "2probe"
        writer.write(text_frame("3probe"))
        assert await read_client_text(reader) == "5"
        assert await read_client_text(reader) == "40"
        writer.write(text_frame("6") + text_frame('42["hello"]') + text_frame('40{"sid":"x"}'))
        while True:
            got.append(await read_client_text(reader))

    async with fake_engine(ignores_close) as target:
        result = await run(target, timeout=1.0)
    assert result.ok, result
    assert result.facts["clean_close"] is False
    assert "did not confirm the close" in result.detail
    assert result.duration_seconds < 1.0
    assert got[:3] == ["41", "1", "close:1000"]


async def test_endless_events_before_the_connect_reply_are_bounded():
    async def chatty(reader, writer):
        await read_client_text(reader)
        writer.write(text_frame("3probe"))
        await read_client_text(reader)
        await read_client_text(reader)
        writer.write(text_frame('42["spam"]') * 500)
        await reader.read()

    async with fake_engine(chatty) as target:
        result = await run(target, timeout=1.0)
    assert result.reason == R.UNEXPECTED_RESPONSE
    assert "no CONNECT reply for namespace / among the first 64 packets" in result.detail
    assert '42["spam"]' in result.detail


async def test_server_closing_the_session_before_connect():
    async def closes(reader, writer):
        await read_client_text(reader)
        writer.write(text_frame("3probe"))
        await read_client_text(reader)
        await read_client_text(reader)
        writer.write(text_frame("1"))
        await reader.read()

    async with fake_engine(closes) as target:
        result = await run(target, timeout=1.0)
    assert result.reason == R.UNEXPECTED_RESPONSE
    assert "closed the Engine.IO session before answering CONNECT" in result.detail


async def test_websocket_closed_by_the_server_mid_connect():
    async def hangs_up(reader, writer):
        await read_client_text(reader)
        writer.write(text_frame("3probe"))
        await read_client_text(reader)
        await read_client_text(reader)
        writer.write(bytes((0x88, 2)) + struct.pack("!H", 1011))
        await reader.read()

    async with fake_engine(hangs_up) as target:
        result = await run(target, timeout=1.0)
    assert result.reason == R.RESET
    assert "closed the WebSocket (code 1011)" in result.detail
