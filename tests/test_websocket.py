import asyncio
import contextlib
import struct

import pytest
from aiohttp import WSMsgType, web
from hypothesis import given, settings
from hypothesis import strategies as st

from probes import websocket as wsm
from probes.httpclient import HttpConnection
from probes.options import parse_url
from probes.result import ProbeFailure, Reason, Trace
from probes.websocket import WebSocket, WebSocketClosed, WebSocketError


def server_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    """An unmasked frame as a server sends it."""
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, n))
    elif n < 1 << 16:
        head = bytes((first, 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, 127)) + struct.pack("!Q", n)
    return head + payload


def unmask_client_frame(data: bytes) -> tuple[int, bytes, bytes]:
    """(first byte, payload, rest) of one masked client frame."""
    assert data[1] & 0x80, "client frames must be masked"
    n = data[1] & 0x7F
    pos = 2
    if n == 126:
        n = struct.unpack_from("!H", data, 2)[0]
        pos = 4
    elif n == 127:
        n = struct.unpack_from("!Q", data, 2)[0]
        pos = 10
    key = data[pos : pos + 4]
    body = data[pos + 4 : pos + 4 + n]
    return data[0], bytes(b ^ key[i % 4] for i, b in enumerate(body)), data[pos + 4 + n :]


# --- RFC 6455 examples --------------------------------------------------------------------


def test_accept_key_rfc_example():
    # RFC 6455 section 1.3
    assert wsm.accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_masked_frame_rfc_example():
    # RFC 6455 section 5.7: a masked "Hello"
    frame = wsm.encode_frame(wsm.OP_TEXT, b"Hello", key=bytes.fromhex("37fa213d"))
    assert frame == bytes.fromhex("818537fa213d7f9f4d5158")


@pytest.mark.parametrize("n", [0, 1, 125, 126, 65535, 65536, 70000])
def test_client_frame_lengths(n):
    payload = bytes(range(256)) * (n // 256 + 1)
    first, body, rest = unmask_client_frame(wsm.encode_frame(wsm.OP_BINARY, payload[:n]))
    assert first == 0x82 and body == payload[:n] and rest == b""


def test_decode_rfc_examples():
    data = (
        bytes.fromhex("810548656c6c6f")  # unmasked "Hello"
        + bytes.fromhex("010348656c")
        + bytes.fromhex("80026c6f")  # fragmented
        + bytes.fromhex("890548656c6c6f")  # ping
        + bytes.fromhex("827e0100")
        + bytes(256)  # 256-byte binary
        + bytes.fromhex("827f0000000000010000")
        + bytes(65536)  # 64 KiB binary
    )
    frames = wsm.decode_frames(data)
    assert [(fin, op, len(p)) for fin, op, p in frames] == [
        (True, 1, 5),
        (False, 1, 3),
        (True, 0, 2),
        (True, 9, 5),
        (True, 2, 256),
        (True, 2, 65536),
    ]


@pytest.mark.parametrize(
    "data,needle",
    [
        (bytes.fromhex("818537fa213d7f9f4d5158"), "masked frame from the server"),
        (server_frame(1, b"x", rsv=0x40), "reserved bits"),
        (server_frame(3, b"x"), "unknown opcode"),
        (server_frame(9, b"x", fin=False), "control frame"),
        (server_frame(8, b"x" * 126), "control frame"),
        (bytes.fromhex("817f8000000000000001") + b"x", "most significant bit"),
        (bytes.fromhex("817f0000000100000000"), "exceeds the"),
        (bytes.fromhex("81"), "truncated frame header"),
        (bytes.fromhex("817e00"), "truncated frame header"),
        (bytes.fromhex("8105486565"), "truncated frame"),
    ],
)
def test_decode_errors(data, needle):
    with pytest.raises(WebSocketError) as err:
        wsm.decode_frames(data)
    assert needle in err.value.detail
    assert err.value.reason == Reason.PROTOCOL_ERROR


# --- Against aiohttp's real WebSocket server ----------------------------------------------


@contextlib.asynccontextmanager
async def aiohttp_ws(handler):
    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/ws"
    finally:
        await runner.cleanup()


async def connect(url: str) -> tuple[WebSocket, HttpConnection]:
    u = parse_url(url, 80)
    conn = await HttpConnection.open(Trace("test", url), u)
    return await wsm.open_websocket(conn, u.path), conn


async def test_echo_through_aiohttp_all_length_encodings():
    async def echo(request):
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    async with aiohttp_ws(echo) as url:
        ws, conn = await connect(url)
        try:
            for n in (0, 5, 125, 126, 65535, 65536, 200_000):
                text = ("é" * n)[:n]
                ws.send_text(text)
                assert await ws.recv_text() == text
            assert await ws.close(2.0) is True
        finally:
            conn.close()


async def test_ping_answered_and_server_close_reported():
    seen = []

    async def handler(request):
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.ping(b"are you there")
        msg = await ws.receive()
        seen.append((msg.type, msg.data))
        await ws.close(code=4001, message=b"bye now")
        return ws

    async with aiohttp_ws(handler) as url:
        ws, conn = await connect(url)
        try:
            with pytest.raises(WebSocketClosed) as err:
                await ws.recv()
            assert err.value.code == 4001
            assert "4001" in err.value.detail and "bye now" in err.value.detail
            assert err.value.reason == Reason.RESET
        finally:
            conn.close()
    assert seen == [(WSMsgType.PONG, b"are you there")]


async def test_our_close_reaches_the_server():
    codes = []

    async def handler(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        codes.append(ws.close_code)
        return ws

    async with aiohttp_ws(handler) as url:
        ws, conn = await connect(url)
        assert await ws.close(2.0) is True
        conn.close()
        for _ in range(100):
            if codes:
                break
            await asyncio.sleep(0.01)
    assert codes == [1000]


# --- Raw stand-ins for what aiohttp will not send -----------------------------------------


@contextlib.asynccontextmanager
async def raw_ws(after_upgrade, accept=None):
    """Answers the upgrade (with the right accept key unless told otherwise), then runs
    ``after_upgrade(reader, writer)``."""

    async def handle(reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            key = next(
                line.split(b":", 1)[1].strip().decode()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + (accept or wsm.accept_for(key)).encode()
                + b"\r\n\r\n"
            )
            await after_upgrade(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
    finally:
        server.close()


async def test_fragmented_message_with_interleaved_ping():
    got = []

    async def script(reader, writer):
        writer.write(
            server_frame(1, "héllo ".encode()[:3], fin=False)
            + server_frame(9, b"p1")
            + server_frame(0, "héllo ".encode()[3:], fin=False)
            + server_frame(0, b"world", fin=True)
        )
        got.append(await reader.read(100))

    async with raw_ws(script) as url:
        ws, conn = await connect(url)
        try:
            assert await ws.recv_text() == "héllo world"
            await asyncio.sleep(0.05)
        finally:
            conn.close()
    first, body, _ = unmask_client_frame(got[0])
    assert (first, body) == (0x8A, b"p1")  # our pong, masked


async def test_wrong_accept_key_is_a_protocol_error():
    async def script(reader, writer):
        await reader.read(100)

    async with raw_ws(script, accept="dGhpcyBpcyBub3QgaXQ=") as url:
        u = parse_url(url, 80)
        conn = await HttpConnection.open(Trace("test", url), u)
        try:
            with pytest.raises(WebSocketError, match="bad Sec-WebSocket-Accept"):
                await wsm.open_websocket(conn, u.path)
        finally:
            conn.close()


async def test_message_over_the_cap_across_fragments():
    async def script(reader, writer):
        writer.write(server_frame(2, b"x" * 600, fin=False) + server_frame(0, b"y" * 600))
        await reader.read(100)

    async with raw_ws(script) as url:
        u = parse_url(url, 80)
        conn = await HttpConnection.open(Trace("test", url), u)
        try:
            ws = await wsm.open_websocket(conn, u.path, max_message=1000)
            with pytest.raises(WebSocketError, match="over the 1000-byte limit"):
                await ws.recv()
        finally:
            conn.close()


async def test_eof_without_close_frame_is_reset():
    async def script(reader, writer):
        writer.write(server_frame(1, b"partial")[:4])

    async with raw_ws(script) as url:
        ws, conn = await connect(url)
        try:
            with pytest.raises(WebSocketError) as err:
                await ws.recv()
            assert err.value.reason == Reason.RESET
        finally:
            conn.close()


async def test_non_101_answer_is_unexpected_response():
    async def handler(request):
        return web.Response(status=400, text="Transport unknown")

    async with aiohttp_ws(handler) as url:
        u = parse_url(url, 80)
        conn = await HttpConnection.open(Trace("test", url), u)
        try:
            with pytest.raises(ProbeFailure) as err:
                await wsm.open_websocket(conn, u.path)
        finally:
            conn.close()
    assert err.value.reason == Reason.UNEXPECTED_RESPONSE
    assert "HTTP 400" in err.value.detail and "Transport unknown" in err.value.detail


# --- Properties ---------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_decode_frames_only_raises_its_error(data):
    try:
        frames = wsm.decode_frames(data, max_frame=1 << 16)
    except WebSocketError:
        return
    assert sum(len(p) for _, _, p in frames) <= len(data)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0, 1, 2, 8, 9, 10]), st.binary(max_size=300), st.booleans()),
        max_size=6,
    )
)
def test_decode_frames_round_trip(frames):
    data = b"".join(server_frame(op, p, fin) for op, p, fin in frames)
    try:
        decoded = wsm.decode_frames(data)
    except WebSocketError:
        # Only control frames that break RFC 6455 5.5 may be refused.
        assert any(op >= 8 and (not fin or len(p) > 125) for op, p, fin in frames)
        return
    assert decoded == [(fin, op, p) for op, p, fin in frames]


class _SinkTransport:
    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass


class _SinkWriter:
    def __init__(self) -> None:
        self.transport = _SinkTransport()
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_stream_reader_only_raises_probe_failures(chunks):
    async def run() -> None:
        reader = asyncio.StreamReader()
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        ws = WebSocket(reader, _SinkWriter(), max_message=4096)  # type: ignore[arg-type]
        for _ in range(20):
            try:
                await ws.recv_text()
            except (WebSocketError, WebSocketClosed):
                return

    asyncio.run(run())
