"""The ``http`` probe against aiohttp servers (plain and TLS) and hostile peers."""

import asyncio
import contextlib
import datetime
import ssl

import pytest
from aiohttp import web

import probes
from probes import http
from probes.httpclient import Response
from probes.options import OptionError
from tests.peers import hostile

R = probes.Reason


@contextlib.asynccontextmanager
async def serve(app: web.Application, tls: ssl.SSLContext | None = None):
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()


seen: list[web.Request] = []


async def handler(request: web.Request) -> web.StreamResponse:
    seen.append(request)
    name = request.match_info["name"]
    if name == "ok":
        return web.Response(text="all systems go", content_type="text/plain")
    if name == "json":
        return web.json_response({"status": "UP", "db": "ok"})
    if name == "down":
        return web.Response(status=503, text="maintenance")
    if name == "redirect":
        raise web.HTTPFound("/ok")
    if name == "big":
        return web.Response(body=b"a" * 100_000 + b"NEEDLE")
    if name == "echo":
        body = await request.read()
        return web.Response(body=body, headers={"X-Method": request.method})
    return web.Response(status=404, text="no such page")


@pytest.fixture
async def server():
    seen.clear()
    app = web.Application()
    app.router.add_route("*", "/{name}", handler)
    async with serve(app) as port:
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self-signed.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return d / "cert.pem", d / "key.pem"


async def run(target, **options):
    return await probes.run("http", target, options, 2.0)


async def test_ok_reports_status_facts_and_phases(server):
    result = await run(f"http://{server}/ok")
    assert result.ok, result
    assert result.detail == "GET /ok answered HTTP 200 OK"
    assert result.facts["status"] == 200
    assert result.facts["http_version"] == "HTTP/1.1"
    assert result.facts["content_type"] == "text/plain"
    assert result.facts["body_bytes"] == len("all systems go")
    assert {"connect", "processing", "transfer"} <= result.phases.keys()


async def test_host_port_target_and_path_option(server):
    result = await run(server, path="/json?x=1")
    assert result.ok, result
    assert seen[-1].path_qs == "/json?x=1"


async def test_503_is_unexpected_response_with_status_and_excerpt(server):
    result = await run(f"http://{server}/down")
    assert result.reason == R.UNEXPECTED_RESPONSE
    assert result.detail == "HTTP 503 Service Unavailable, expected 2xx: 'maintenance'"
    assert result.facts["status"] == 503


async def test_redirect_is_not_followed(server):
    result = await run(f"http://{server}/redirect")
    assert result.reason == R.UNEXPECTED_RESPONSE
    assert result.detail.startswith("HTTP 302 Found, expected 2xx")
    assert (await run(f"http://{server}/redirect", valid_status="2xx,3xx")).ok


async def test_valid_status_list_accepts_a_404(server):
    assert (await run(f"http://{server}/missing", valid_status="200,404")).ok
    bad = await run(f"http://{server}/missing", valid_status="200-399")
    assert bad.detail.startswith("HTTP 404 Not Found, expected 200-399")


@pytest.mark.parametrize(
    "options,needle",
    [
        ({"body_contains": "stop"}, "body does not contain 'stop': 'all systems go'"),
        ({"body_regex": "^UP$"}, "does not match body_regex '^UP$'"),
        ({"fail_if_body_regex": "sys.ems"}, "matches fail_if_body_regex 'sys.ems' at byte 4"),
        ({"content_type": "application/json"}, "with 'text/plain; charset=utf-8', expected app"),
    ],
)
async def test_body_and_content_type_assertions(server, options, needle):
    result = await run(f"http://{server}/ok", **options)
    assert result.reason == R.UNEXPECTED_RESPONSE
    assert needle in result.detail


async def test_passing_body_assertions(server):
    result = await run(
        f"http://{server}/json",
        body_contains='"UP"',
        body_regex=r'"db":\s*"ok"',
        fail_if_body_regex="DOWN|error",
        content_type="application/*",
    )
    assert result.ok, result


async def test_max_body_truncates_and_says_so(server):
    result = await run(f"http://{server}/big", max_body=1000, body_contains="NEEDLE")
    assert result.reason == R.UNEXPECTED_RESPONSE
    assert "in the first 1000 bytes" in result.detail
    assert result.facts["body_bytes"] == 1000
    ok = await run(f"http://{server}/big", max_body=200_000, body_contains="NEEDLE")
    assert ok.ok, ok


async def test_method_headers_body_and_server_name_are_sent(server):
    result = await run(
        f"http://{server}/echo",
        method="put",
        headers={"X-Token": "abc", "Content-Type": "application/json"},
        body='{"ping":1}',
        server_name="tb.example.com",
        body_contains='{"ping":1}',
    )
    assert result.ok, result
    req = seen[-1]
    assert req.method == "PUT"
    assert req.headers["Host"] == "tb.example.com"
    assert req.headers["X-Token"] == "abc"
    assert req.headers["Content-Type"] == "application/json"


async def test_https_with_a_self_signed_certificate_and_sni(tls_files):
    cert, key = tls_files
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    sni: list[str | None] = []
    ctx.sni_callback = lambda sock, name, c: sni.append(name)
    app = web.Application()
    app.router.add_route("*", "/{name}", handler)
    async with serve(app, tls=ctx) as port:
        result = await run(f"https://127.0.0.1:{port}/ok", server_name="api.example.com")
        plain = await run(f"http://127.0.0.1:{port}/ok")
    assert result.ok, result
    assert "tls" in result.phases
    assert sni == ["api.example.com"]
    assert plain.reason in (R.PROTOCOL_ERROR, R.RESET), plain


async def test_refused():
    async with hostile.closed_port() as (host, port):
        result = await run(f"{host}:{port}")
    assert result.reason == R.REFUSED


async def test_silent_server_times_out_within_budget():
    async with hostile.silent_tcp() as (host, port):
        result = await probes.run("http", f"{host}:{port}", {}, 0.3)
    assert result.reason == R.TIMEOUT
    assert "during processing" in result.detail
    assert result.duration_seconds < 1.0


@pytest.mark.parametrize(
    "reply,reason",
    [
        (hostile.garbage(), R.PROTOCOL_ERROR),
        (b"220 smtp.example.com ESMTP\r\n", R.PROTOCOL_ERROR),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 999999\r\n\r\npartial", R.RESET),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nx", R.RESET),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffff\r\nab", R.RESET),
        (b"", R.RESET),
    ],
    ids=["garbage", "smtp", "truncated", "absurd-length", "absurd-chunk", "empty"],
)
async def test_hostile_answers(reply, reason):
    async with hostile.tcp_responder(lambda _: reply) as (host, port):
        result = await run(f"{host}:{port}")
    assert result.reason == reason, result
    assert not result.ok


async def test_other_protocol_fails_at_once_not_at_the_timeout():
    # An SSH server greets and waits: no blank line will ever end "headers".
    greeting = b"SSH-2.0-OpenSSH_9.6\r\n"
    async with hostile.tcp_responder(lambda _: greeting, greet=True, close=False) as (host, port):
        result = await probes.run("http", f"{host}:{port}", {}, 10.0)
    assert result.reason == R.PROTOCOL_ERROR
    assert result.detail == "not an HTTP response: 'SSH-2.0-OpenSSH_9.6\\r\\n'"
    assert result.duration_seconds < 5.0


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("2xx", ((200, 299),)),
        ("200-399", ((200, 399),)),
        ("200, 204,3XX", ((200, 200), (204, 204), (300, 399))),
        (204, ((204, 204),)),
        ([200, "301-302"], ((200, 200), (301, 302))),
    ],
)
def test_valid_status_parsing(raw, expected):
    opts = http.Options.parse({"valid_status": raw})
    assert opts.valid_status.ranges == expected
    assert 200 in http.Options.parse({}).valid_status
    assert 302 not in http.Options.parse({}).valid_status
    assert opts.model_dump()["valid_status"] == str(opts.valid_status)


@pytest.mark.parametrize(
    "options,key,needle",
    [
        ({"valid_status": "2xy"}, "valid_status", "'2xy' is not a status list"),
        ({"valid_status": "200,abc"}, "valid_status", "('abc' is not one)"),
        ({"valid_status": "399-200"}, "valid_status", "is not a status list"),
        ({"valid_status": "600"}, "valid_status", "is not a status list"),
        ({"valid_status": True}, "valid_status", "is not a status list"),
        ({"valid_status": ""}, "valid_status", "is not a status list"),
        ({"method": "GET /x"}, "method", "not an HTTP method"),
        ({"path": "nope"}, "path", "must start with '/'"),
        ({"headers": {"X": "a\r\nInjected: 1"}}, "headers", "must not contain CR"),
        ({"headers": {"Bad Name": "x"}}, "headers", "not a header name"),
        ({"body_regex": "(unclosed"}, "body_regex", "not a valid regular expression"),
        ({"content_type": "json"}, "content_type", "not a media type"),
        ({"max_body": -1}, "max_body", "greater than or equal to 0"),
        ({"server_name": "a b"}, "server_name", "without spaces"),
        ({"follow_redirects": True}, "follow_redirects", "unknown option"),
    ],
)
def test_option_errors_name_the_key(options, key, needle):
    with pytest.raises(OptionError) as info:
        http.Options.parse(options)
    assert info.value.key == key
    assert needle in str(info.value)
    assert "Value error" not in str(info.value)


def test_options_from_cli_strings():
    opts = http.Options.parse({"max_body": "100", "valid_status": "2xx,301", "method": "head"})
    assert (opts.max_body, opts.method, str(opts.valid_status)) == (100, "HEAD", "2xx,301")


def test_judge_is_pure():
    opts = http.Options.parse({"body_contains": "ok"})
    resp = Response(200, "OK", "HTTP/1.1", {}, b"ok", False)
    assert http.judge(resp, opts) is None
    empty = Response(500, "", "HTTP/1.1", {}, b"", False)
    assert http.judge(empty, opts) == "HTTP 500, expected 2xx"


async def test_cli_probe_http(server):
    proc = await asyncio.create_subprocess_exec(
        "python",
        "-m",
        "jupiterd",
        "probe",
        "http",
        f"http://{server}/down",
        "--set",
        "valid_status=200,503",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, (out, err)
    assert out.startswith(b"OK   http")
