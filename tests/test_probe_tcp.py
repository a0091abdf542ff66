import asyncio
import json
import subprocess
import sys

import pytest

import probes
from probes.options import OptionError, parse_host, parse_hostport, parse_url
from tests.peers import hostile


async def test_tcp_ok_against_a_listener():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await probes.run("tcp", f"127.0.0.1:{port}", {}, 2.0)
    assert result.ok, result
    assert result.reason == probes.Reason.OK
    assert "connect" in result.phases


async def test_tcp_refused():
    async with hostile.closed_port() as (host, port):
        result = await probes.run("tcp", f"{host}:{port}", {}, 2.0)
    assert not result.ok
    assert result.reason == probes.Reason.REFUSED
    assert "during connect" in result.detail


async def test_tcp_tls_against_plain_listener_is_tls_error_or_reset():
    async with hostile.tcp_responder(lambda d: b"HTTP/1.0 400 Bad\r\n\r\n") as (host, port):
        result = await probes.run("tcp", f"{host}:{port}", {"tls": "true"}, 2.0)
    assert not result.ok
    assert result.reason in (probes.Reason.TLS_ERROR, probes.Reason.RESET)


async def test_tcp_tls_silent_peer_times_out_within_budget():
    async with hostile.silent_tcp() as (host, port):
        result = await probes.run("tcp", f"{host}:{port}", {"tls": True}, 0.3)
    assert result.reason == probes.Reason.TIMEOUT
    assert "during tls" in result.detail
    assert result.duration_seconds < 1.0


@pytest.mark.parametrize(
    "target,default,expected",
    [
        ("10.0.0.1:3000", None, ("10.0.0.1", 3000)),
        ("example.org", 80, ("example.org", 80)),
        ("[::1]:3478", None, ("::1", 3478)),
        ("::1", 3478, ("::1", 3478)),
        ("http://h:8080/x", None, ("h", 8080)),
    ],
)
def test_parse_hostport(target, default, expected):
    hp = parse_hostport(target, default)
    assert (hp.host, hp.port) == expected


@pytest.mark.parametrize("target", ["h", "h:0", "h:70000", "h:abc", "[::1", ":80", "[zz]:1"])
def test_parse_hostport_rejects(target):
    with pytest.raises(OptionError):
        parse_hostport(target, None)


def test_parse_url_defaults():
    u = parse_url("10.0.0.5:8080", 8080)
    assert str(u) == "http://10.0.0.5:8080/"
    u = parse_url("https://tb.example.com/login?x=1", 8080)
    assert (u.scheme, u.port, u.path) == ("https", 443, "/login?x=1")
    u = parse_url("ws://[::1]:3000/socket.io/", 3000)
    assert u.origin() == "http://[::1]:3000"


def test_parse_host():
    assert parse_host("[::1]") == "::1"
    assert parse_host("10.0.0.1") == "10.0.0.1"
    with pytest.raises(OptionError):
        parse_host("10.0.0.1:80")


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "jupiterd", *args], capture_output=True, text=True, timeout=30
    )


def test_cli_probe_json_and_exit_codes():
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        ok = run_cli("probe", "tcp", f"127.0.0.1:{port}", "--json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert {"ok", "kind", "target", "duration_seconds", "reason", "detail", "phases"} <= doc.keys()
    assert doc["ok"] is True and doc["kind"] == "tcp"
    bad = run_cli("probe", "tcp", f"127.0.0.1:{port}")
    assert bad.returncode == 1
    assert bad.stdout.startswith("FAIL tcp") and "refused" in bad.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (("probe", "nosuch", "h:1"), "unknown probe kind 'nosuch'"),
        (("probe", "tcp", "h:1", "--set", "bogus=1"), "unknown option 'bogus'"),
        (("probe", "tcp", "h:1", "--set", "novalue"), "--set expects KEY=VALUE"),
        (("probe", "tcp", "h:1", "--timeout", "0"), "--timeout must be a positive"),
        (("probe", "tcp", "h"), "a port is required"),
        (("probe",), "required"),
    ],
)
def test_cli_probe_usage_errors_are_one_line(args, needle):
    r = run_cli(*args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
