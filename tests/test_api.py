"""The HTTP API is not a way in: cross-site posts, DNS rebinding, a missing
or wrong token, and slow or idle clients are all refused, while the CLI,
Prometheus by IP and the health check keep working."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from jupiterd.config import load_config
from jupiterd.core.inventory import StaticInventory
from jupiterd.runtime.api import make_app, start_server
from jupiterd.runtime.supervisor import Supervisor
from jupiterd.telemetry.metrics import Metrics
from tests.daemon_helpers import FakeExecutor, config_for, wait_for
from tests.peers.hostile import free_port

TOKEN = "t0ken-for-the-api-tests-0123456789"
API_HEADER = "X-Jupiterd-Request"  # the wire name the CLI and curl users send
GOOD = {API_HEADER: "1", "Content-Type": "application/json"}


def _doc(state_dir: str, port: int, http: dict[str, Any]) -> dict[str, Any]:
    return {
        "state_dir": state_dir,
        "http": http,
        "aws": {"enabled": False},
        "defaults": {"interval": 0.2, "fast_interval": 0.05, "timeout": 0.15, "jitter": 0},
        "services": {
            "sig": {
                "probe": {"kind": "tcp", "port": port},
                "primary": {"address": "127.0.0.2"},
                "backup": {"address": "127.0.1.2"},
            }
        },
    }


async def _supervisor(tmp_path: Path, http: dict[str, Any]) -> AsyncIterator[Supervisor]:
    peer = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.2", 0)
    port = peer.sockets[0].getsockname()[1]
    doc = _doc(str(tmp_path / "state"), port, http)
    cfg = config_for(doc["services"], doc["state_dir"], http=http)
    (tmp_path / "jupiterd.yaml").write_text(yaml.safe_dump(doc))
    sup = Supervisor(
        cfg,
        executor=FakeExecutor(),
        inventory=StaticInventory(cfg),
        metrics=Metrics(CollectorRegistry()),
        rng=random.Random(1),
        tick_seconds=0.1,
    )
    await sup.start()
    await wait_for(sup.healthy, what="the main loop")
    try:
        yield sup
    finally:
        await sup.stop(grace=1)
        peer.close()
        await peer.wait_closed()


@pytest.fixture
async def sup(tmp_path):
    async for s in _supervisor(tmp_path, {"listen": "127.0.0.1:9478"}):
        yield s


@pytest.fixture
async def client(sup):
    async with TestClient(TestServer(make_app(sup))) as c:
        yield c


# --------------------------------------------------------------------------- cross-site


@pytest.mark.parametrize("body", ["", "by=mallory"])
async def test_cross_site_form_post_is_refused(client, sup, body):
    """What a web page's <form method=post action=.../pause> sends: a form
    body (empty without inputs), its Origin, no custom header."""
    r = await client.post(
        "/pause",
        data=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": "http://evil.example",
        },
    )
    assert r.status == 403
    assert not sup.state.paused


async def test_text_plain_post_is_refused(client, sup):
    """A simple cross-site fetch() may send text/plain; even with the custom
    header a non-JSON body is refused."""
    body = json.dumps({"by": "mallory"})
    r = await client.post("/pause", data=body, headers={"Content-Type": "text/plain"})
    assert r.status == 403 and API_HEADER in await r.text()
    r = await client.post(
        "/pause", data=body, headers={API_HEADER: "1", "Content-Type": "text/plain"}
    )
    assert r.status == 415 and "application/json" in await r.text()
    r = await client.post("/pause", data=body.encode(), headers={API_HEADER: "1"})
    assert r.status == 415  # a body with no content type
    assert not sup.state.paused


async def test_post_without_the_custom_header_is_refused(client, sup):
    r = await client.post("/pause", json={"by": "mallory"})
    assert r.status == 403
    assert f"'{API_HEADER}: 1'" in await r.text()
    assert not sup.state.paused
    r = await client.request("PUT", "/pause", json={"by": "mallory"})
    assert r.status == 403  # any state-changing method, not only POST


async def test_foreign_origin_or_referer_is_refused(client, sup):
    for extra in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Origin": "http://127.0.0.1:1"},  # another site on this host
        {"Referer": "http://evil.example/attack.html"},
    ):
        r = await client.post("/pause", json={"by": "mallory"}, headers={API_HEADER: "1", **extra})
        assert r.status == 403, extra
        assert "cross-origin" in await r.text()
    assert not sup.state.paused
    # The listener's own origin is not foreign.
    own = f"http://{client.host}:{client.port}"
    r = await client.post("/pause", json={"by": "alice"}, headers={API_HEADER: "1", "Origin": own})
    assert r.status == 200 and sup.state.paused


async def test_a_good_post_pauses_and_resumes(client, sup):
    r = await client.post("/pause", json={"by": "alice"}, headers=GOOD)
    assert r.status == 200
    assert sup.state.paused and sup.state.pause_reason == "paused by alice"
    r = await client.post("/resume", headers={API_HEADER: "1"})  # no body: no content type
    assert r.status == 200 and not sup.state.paused


# --------------------------------------------------------------------------- DNS rebinding


async def test_foreign_host_is_refused_on_every_method(client, sup):
    """A DNS-rebinding page reaches the listener under its own name."""
    for host in ("evil.example", "evil.example:9478", "rebind.127.0.0.1.nip.io:9478"):
        r = await client.get("/status", headers={"Host": host})
        assert r.status == 403, host
        text = await r.text()
        assert "sig" not in text and "DNS rebinding" in text
        r = await client.get("/metrics", headers={"Host": host})
        assert r.status == 403
        r = await client.post("/pause", json={"by": "mallory"}, headers={**GOOD, "Host": host})
        assert r.status == 403
    assert not sup.state.paused


async def test_listener_names_are_accepted(client, sup):
    """Loopback names, any IP literal (a Prometheus scraping by address, the
    Docker HEALTHCHECK on 127.0.0.1), the listen address."""
    for host in (
        "127.0.0.1:9478",
        "127.0.0.40:9478",
        "localhost",
        "LOCALHOST:9478",
        "[::1]:9478",
        "10.0.3.7:9478",
        "[fd00::7]:9478",
    ):
        r = await client.get("/metrics", headers={"Host": host})
        assert r.status == 200, host
    r = await client.get("/healthz", headers={"Host": "127.0.0.1:9478"})
    assert r.status == 200


async def test_allowed_hosts_admit_a_dns_name(tmp_path):
    http = {"listen": "127.0.0.1:9478", "allowed_hosts": ["jupiterd.ops.example"]}
    async for sup in _supervisor(tmp_path, http):
        async with TestClient(TestServer(make_app(sup))) as c:
            r = await c.get("/status", headers={"Host": "Jupiterd.Ops.Example:9478"})
            assert r.status == 200
            r = await c.get("/status", headers={"Host": "other.ops.example:9478"})
            assert r.status == 403


# --------------------------------------------------------------------------- token


@pytest.fixture
async def token_sup(tmp_path):
    (tmp_path / "api.token").write_text(TOKEN + "\n")
    http = {"listen": "127.0.0.1:9478", "token": {"file": str(tmp_path / "api.token")}}
    async for s in _supervisor(tmp_path, http):
        yield s


async def test_token_missing_wrong_and_right(token_sup):
    sup = token_sup
    async with TestClient(TestServer(make_app(sup))) as c:
        r = await c.post("/pause", json={"by": "mallory"}, headers=GOOD)
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in await r.text()
        for wrong in ("Bearer nope", f"Bearer {TOKEN}x", f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}"):
            r = await c.post(
                "/pause", json={"by": "mallory"}, headers={**GOOD, "Authorization": wrong}
            )
            assert r.status == 401, wrong
        assert not sup.state.paused
        auth = {**GOOD, "Authorization": f"Bearer {TOKEN}"}
        r = await c.post("/pause", json={"by": "alice"}, headers=auth)
        assert r.status == 200 and sup.state.paused
        # GET stays open (Prometheus), and never shows the token.
        r = await c.get("/status")
        assert r.status == 200 and TOKEN not in await r.text()
        r = await c.get("/metrics")
        assert TOKEN not in await r.text()
    assert TOKEN not in repr(sup.config)


def test_token_is_validated_without_echoing_it(tmp_path):
    doc = _doc(str(tmp_path), 1, {"token": "short"})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    from jupiterd.config import ConfigError

    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path / "c.yaml"))
    assert err.value.key == "http.token" and "short" not in str(err.value)
    doc["http"] = {"token": {"file": str(tmp_path / "absent")}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="cannot read the file named here"):
        load_config(str(tmp_path / "c.yaml"))
    # Commands that need no secrets leave it unread.
    assert load_config(str(tmp_path / "c.yaml"), secrets=False).http.token is not None


# --------------------------------------------------------------------------- the CLI


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jupiterd",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _serve(tmp_path: Path, timeout: float) -> AsyncIterator[tuple[Any, Any, Path]]:
    """A real listener on a loopback port, and its config file with a token."""
    (tmp_path / "api.token").write_text(TOKEN)
    http = {
        "listen": f"127.0.0.1:{free_port()}",
        "token": {"file": str(tmp_path / "api.token")},
        "read_timeout": timeout,
        "idle_timeout": 2 * timeout,
        "max_connections": 6,
        "max_connections_per_client": 4,
    }
    async for sup in _supervisor(tmp_path, http):
        server = await start_server(sup, http["listen"])
        try:
            yield sup, int(http["listen"].rsplit(":", 1)[1]), tmp_path / "jupiterd.yaml", server
        finally:
            await server.cleanup()


@pytest.fixture
async def served(tmp_path):
    """Short read and idle timeouts: slow clients are dropped quickly."""
    async for s in _serve(tmp_path, 1.0):
        yield s


@pytest.fixture
async def served_patient(tmp_path):
    """Timeouts far beyond the test: only the caps act."""
    async for s in _serve(tmp_path, 600):
        yield s


@pytest.mark.slow
async def test_cli_pause_and_resume_send_the_header_and_token(served):
    sup, _, cfg, _ = served
    rc, out, err = await _cli("pause", "--config", str(cfg), "--by", "oncall")
    assert rc == 0, err
    assert json.loads(out) == {"paused": True, "reason": "paused by oncall"}
    assert sup.state.paused and sup.state.pause_reason == "paused by oncall"
    rc, _out, err = await _cli("resume", "--config", str(cfg))
    assert rc == 0, err
    assert not sup.state.paused
    # A wrong token in the file: the refusal is said, exit 1.
    token_file = cfg.parent / "api.token"
    token_file.write_text("a-different-token-0123456789")
    rc, _out, err = await _cli("pause", "--config", str(cfg))
    assert rc == 1 and "401" in err and "a-different" not in err
    assert not sup.state.paused


# --------------------------------------------------------------------------- connections


async def _connect(port: int, source: str = "127.0.0.1") -> tuple[Any, Any]:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def _closed_by_peer(reader: asyncio.StreamReader, within: float = 10.0) -> bytes:
    """Everything the server sent until it closed (a bounded wait)."""
    data = b""
    try:
        async with asyncio.timeout(within):
            while chunk := await reader.read(65536):
                data += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {within:g} s") from None
    return data


async def _healthz(port: int) -> int:
    async with ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
        return r.status


async def test_connection_caps_keep_healthz_answering(served_patient):
    _, port, _, server = served_patient
    # One client (a slowloris from 127.0.0.9) opens many connections: past
    # max_connections_per_client (4) each is answered 503 and closed at once.
    held = [await _connect(port, "127.0.0.9") for _ in range(4)]
    for _, w in held:
        w.write(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
    for _ in range(10):
        r, w = await _connect(port, "127.0.0.9")
        data = await _closed_by_peer(r)
        assert data.startswith(b"HTTP/1.1 503") and b"too many connections" in data
        w.close()
    assert not any(r.at_eof() for r, _ in held)
    # Another address still gets in: the health check answers.
    assert await _healthz(port) == 200
    await wait_for(lambda: len(server.guard.conns) == 4, what="the health check's slot freed")
    # Past max_connections (6) in all, every address is refused.
    more = [await _connect(port, f"127.0.0.{10 + i}") for i in range(2)]
    r, w = await _connect(port, "127.0.0.20")
    assert (await _closed_by_peer(r)).startswith(b"HTTP/1.1 503")
    w.close()
    # A closed connection frees its slot.
    for _, w in held + more:
        w.close()
    await wait_for(lambda: not server.guard.conns, what="the slots freed")
    assert not server.guard.per_client
    assert await _healthz(port) == 200


async def test_slow_and_idle_clients_are_closed(served):
    sup, port, _, server = served
    # Connects and says nothing.
    silent_r, silent_w = await _connect(port)
    # Drips its headers, a line at a time, faster than any idle timeout.
    drip_r, drip_w = await _connect(port)
    drip_w.write(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    async def drip() -> None:
        for i in range(200):
            if drip_r.at_eof() or drip_w.is_closing():
                return
            drip_w.write(f"X-Drip-{i}: x\r\n".encode())
            await asyncio.sleep(0.05)

    dripping = asyncio.create_task(drip())
    # Sends a POST's headers, then too little of its body.
    body_r, body_w = await _connect(port)
    body_w.write(
        b"POST /pause HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Jupiterd-Request: 1\r\n"
        b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    # Asks once, then keeps the connection idle.
    idle_r, idle_w = await _connect(port)
    idle_w.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await idle_r.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    for rd in (silent_r, drip_r, body_r, idle_r):
        await _closed_by_peer(rd)
    dripping.cancel()
    await wait_for(lambda: not server.guard.conns, what="every connection closed")
    assert not sup.state.paused
    for w in (silent_w, drip_w, body_w, idle_w):
        w.close()


@pytest.mark.slow
async def test_a_client_that_stops_reading_is_closed(served):
    """A large /metrics (thousands of targets) to a client that reads none
    of it: once the socket's buffers are full for idle_timeout, closed."""
    from prometheus_client import Gauge

    sup, port, _, server = served
    big = Gauge("jupiterd_test_padding", "padding", ["n"], registry=sup.metrics.registry)
    for i in range(40_000):  # ~6 MB: more than the socket buffers hold
        big.labels(str(i).rjust(100, "x")).set(i)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    await asyncio.get_running_loop().sock_sendall(
        sock, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    stalled = lambda: any(c.stalled for c in server.guard.conns.values())  # noqa: E731
    await wait_for(stalled, timeout=30, what="the response to fill the socket's buffers")
    await wait_for(lambda: not server.guard.conns, timeout=30, what="the stalled reader closed")
    reader, writer = await asyncio.open_connection(sock=sock)
    received = await _closed_by_peer(reader)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert len(body) < length  # cut off, not finished
    writer.close()


# --------------------------------------------------------------------------- loopback


def test_all_of_127_and_ipv6_loopback_are_loopback():
    from jupiterd.config import is_loopback

    for host in ("127.0.0.1", "127.0.0.40", "127.255.255.254", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("10.0.0.1", "0.0.0.0", "::", "jupiterd.example", "128.0.0.1"):
        assert not is_loopback(host), host


@pytest.mark.slow
async def test_check_config_calls_127_0_0_40_loopback(tmp_path):
    doc = _doc(str(tmp_path), 1, {"listen": "127.0.0.40:9478"})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    rc, _out, err = await _cli("check-config", str(tmp_path / "c.yaml"))
    assert rc == 0 and "not loopback" not in err
    doc["http"] = {"listen": "[::1]:9478"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    rc, _out, err = await _cli("check-config", str(tmp_path / "c.yaml"))
    assert rc == 0 and "not loopback" not in err
    doc["http"] = {"listen": "10.0.3.7:9478"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    rc, _out, err = await _cli("check-config", str(tmp_path / "c.yaml"))
    assert rc == 0 and "not loopback" in err and "http.token" in err


# --------------------------------------------------------------------------- a daemon process


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.slow
def _fds_after(pid: int, seconds: float) -> int:
    time.sleep(seconds)
    return _fds(pid)


def test_a_daemon_keeps_its_descriptors_and_health_check_under_a_flood(tmp_path):
    """`jupiterd run` on 127.0.0.40 (loopback: no exposure warning); three
    clients open ten slowloris connections each: at most the per-client cap
    of each is held, the Dockerfile's HEALTHCHECK still passes, the
    daemon's descriptors stay bounded, and the read deadline frees them."""
    from tests.test_dockerfile import _run_check

    peer = socket.socket()
    peer.bind(("127.0.0.2", 0))
    peer.listen(64)
    http_port = free_port(host="127.0.0.40")
    http = {
        "listen": f"127.0.0.40:{http_port}",
        "read_timeout": 5,
        "max_connections": 16,
        "max_connections_per_client": 4,
    }
    doc = _doc(str(tmp_path / "state"), peer.getsockname()[1], http)
    doc["log"] = {"format": "json"}
    cfg = tmp_path / "jupiterd.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    log = tmp_path / "daemon.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupiterd", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.40:{http_port}/healthz"
    conns: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while _run_check(url).returncode != 0:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.1)
        before = _fds(proc.pid)
        for source in ("127.0.0.9", "127.0.0.10", "127.0.0.11"):
            for _ in range(10):
                s = socket.create_connection(("127.0.0.40", http_port), 5, (source, 0))
                s.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.40\r\n")  # never finished
                conns.append(s)
        # The held ones + a few of the probes' own sockets. Probe sockets come
        # and go (more at once on a loaded machine): the least of a few
        # looks counts what stays, which would be 30 more without the caps.
        least = min(_fds_after(proc.pid, 0.05) for _ in range(10))
        assert least <= before + 12 + 4
        assert _run_check(url).returncode == 0
        answers = []
        for s in conns:
            s.settimeout(30)
            try:
                answers.append(s.recv(100)[:12])
            except ConnectionResetError:
                answers.append(b"")
        # Past the per-client cap: 503 at once; the held ones: closed, unanswered,
        # by the read deadline.
        assert sorted(answers) == [b""] * 12 + [b"HTTP/1.1 503"] * 18
        assert _run_check(url).returncode == 0
        assert _fds(proc.pid) <= before + 4
    finally:
        for s in conns:
            s.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        peer.close()
    text = log.read_text()
    assert '"api exposed"' not in text and "not loopback" not in text
