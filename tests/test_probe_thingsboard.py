"""The ``thingsboard`` probe against the ThingsBoard stand-in and hostile peers."""

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import probes
from jupiterd.sandbox.peers import thingsboard_standin as thingsboard_standin_module
from jupiterd.sandbox.peers.thingsboard_standin import thingsboard_standin
from probes import thingsboard as tbp
from probes.httpclient import Response
from probes.options import OptionError
from tests.peers import hostile

R = probes.Reason
USER, PASSWORD, DEVICE = "probe@tenant.example", "s3cret-Passw0rd", "A1b2C3d4E5f6G7h8"
STANDIN = Path(thingsboard_standin_module.__file__)


@pytest.fixture
async def tb():
    async with thingsboard_standin(
        {USER: PASSWORD, "mfa@tenant.example": PASSWORD},
        two_factor={"mfa@tenant.example"},
        device_tokens={DEVICE: "active", "gone-device-1": "deleted"},
    ) as standin:
        yield standin


async def run(target, timeout=3.0, **options):
    return await probes.run("thingsboard", target, options, timeout)


def assert_no_secrets(result, *secrets):
    text = json.dumps(result.to_dict()) + repr(result)
    for secret in (PASSWORD, DEVICE, *secrets):
        assert secret not in text, f"a secret leaked into {text}"


async def test_liveness_only(tb):
    result = await run(tb.url)
    assert result.ok, result
    assert result.detail == "web app up"
    assert "liveness" in result.phases and "login" not in result.phases
    assert tb.requests == [("GET", "/login")]


async def test_host_port_target(tb):
    host, port = tb
    assert (await run(f"{host}:{port}")).ok


async def test_deep_check_logs_in_calls_the_api_and_posts_telemetry(tb):
    result = await run(tb.url, username=USER, password=PASSWORD, device_token=DEVICE)
    assert result.ok, result
    assert result.detail == (
        f"web app up, logged in as {USER} (TENANT_ADMIN), GET /api/auth/user answered 200, "
        "device telemetry accepted"
    )
    assert result.facts["authority"] == "TENANT_ADMIN"
    assert result.facts["tenant_id"] == tb.users[USER].tenant_id
    assert result.facts["user"] == USER
    assert {"liveness", "login", "api", "telemetry"} <= result.phases.keys()
    assert tb.requests == [
        ("GET", "/login"),
        ("POST", "/api/auth/login"),
        ("GET", "/api/auth/user"),
        ("POST", f"/api/v1/{DEVICE}/telemetry"),
    ]
    assert tb.telemetry == [(DEVICE, {"jupiterd_probe": 1})]
    assert len(set(tb.peers)) == 1, "all requests should share one keep-alive connection"
    assert_no_secrets(result)


async def test_wrong_password_is_auth_failed_without_the_password(tb):
    result = await run(tb.url, username=USER, password="wrong-password-123")
    assert result.reason == R.AUTH_FAILED
    assert result.detail == (
        f"ThingsBoard refused the login of '{USER}': 'Invalid username or password' (errorCode 10)"
    )
    assert_no_secrets(result, "wrong-password-123")


async def test_two_factor_user_is_auth_failed_with_advice(tb):
    result = await run(tb.url, username="mfa@tenant.example", password=PASSWORD)
    assert result.reason == R.AUTH_FAILED
    assert "scope PRE_VERIFICATION_TOKEN" in result.detail
    assert "must not have two-factor authentication" in result.detail
    assert ("GET", "/api/auth/user") not in tb.requests


async def test_expired_token_is_auth_failed_with_a_hint(tb):
    tb.token_ttl = 0
    result = await run(tb.url, username=USER, password=PASSWORD)
    assert result.reason == R.AUTH_FAILED
    assert "'Token has expired' (errorCode 11)" in result.detail
    assert "clock skew" in result.detail


async def test_unknown_api_path(tb):
    result = await run(tb.url, username=USER, password=PASSWORD, api="/api/nope")
    assert result.reason == R.UNEXPECTED_RESPONSE
    assert result.detail == "GET /api/nope answered HTTP 404 Not Found: " + (
        "'No static resource api/nope.' (errorCode 32)"
    )


async def test_unknown_device_token(tb):
    result = await run(tb.url, device_token="not-a-device-token")
    assert result.reason == R.AUTH_FAILED
    assert "unknown device token" in result.detail
    assert_no_secrets(result, "not-a-device-token")


async def test_deleted_device_is_rejected(tb):
    result = await run(tb.url, device_token="gone-device-1")
    assert result.reason == R.REJECTED
    assert "'Device was deleted!'" in result.detail
    assert_no_secrets(result, "gone-device-1")


async def test_database_down_passes_liveness_but_fails_login(tb):
    tb.fault = "db-down"
    assert (await run(tb.url)).ok
    result = await run(tb.url, username=USER, password=PASSWORD)
    assert result.reason == R.UNEXPECTED_RESPONSE
    assert result.detail == (
        "POST /api/auth/login answered HTTP 500 Internal Server Error, expected 200 with a token: "
        "'Database error' (errorCode 46)"
    )


@pytest.mark.parametrize(
    "fault,needle",
    [
        ("foreign-page", "an HTML page titled 'Welcome to nginx!' that is not ThingsBoard's"),
        ("json-page", "answered 200 with application/json, expected text/html"),
        ("bad-gateway", "answered HTTP 502 Bad Gateway, expected 200 with ThingsBoard's web app"),
    ],
)
async def test_not_thingsboard_on_the_login_page(tb, fault, needle):
    tb.fault = fault
    result = await run(tb.url, username=USER, password=PASSWORD)
    assert result.reason == R.UNEXPECTED_RESPONSE
    assert needle in result.detail
    assert ("POST", "/api/auth/login") not in tb.requests


async def test_slow_login_times_out_naming_the_step(tb):
    tb.delay, tb.slow_paths = 5.0, "/api/auth/login"
    result = await run(tb.url, timeout=0.5, username=USER, password=PASSWORD)
    assert result.reason == R.TIMEOUT
    assert result.detail == "no answer within 0.5 s during login (POST /api/auth/login)"
    assert result.duration_seconds < 2.0


async def test_slow_web_app_times_out_in_liveness(tb):
    tb.delay = 5.0
    result = await run(tb.url, timeout=0.3)
    assert result.reason == R.TIMEOUT
    assert "during liveness (GET /login)" in result.detail


async def test_refused_and_silent_and_garbage():
    async with hostile.closed_port() as (host, port):
        assert (await run(f"{host}:{port}")).reason == R.REFUSED
    async with hostile.silent_tcp() as (host, port):
        silent = await run(f"{host}:{port}", timeout=0.3)
    assert silent.reason == R.TIMEOUT and silent.duration_seconds < 1.0
    async with hostile.tcp_responder(lambda _: hostile.garbage()) as (host, port):
        assert (await run(f"{host}:{port}")).reason == R.PROTOCOL_ERROR


async def test_secrets_echoed_by_a_server_are_scrubbed():
    """A proxy's error page may echo the request (the device token is in the
    path, the password in the body): neither may reach the detail."""

    def reply(request: bytes) -> bytes:
        if request.startswith(b"GET /login"):
            page = b"<html><title>ThingsBoard</title><tb-root></tb-root></html>"
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
            return head + b"Content-Length: %d\r\n\r\n" % len(page) + page
        line, _, rest = request.partition(b"\r\n")
        echo = rest.partition(b"\r\n\r\n")[2] + b" " + line  # the password near byte 50
        return b"HTTP/1.1 500 Oops\r\nConnection: close\r\n\r\n" + echo

    async with hostile.tcp_responder(reply) as (host, port):
        login = await run(f"{host}:{port}", username=USER, password=PASSWORD)
        device = await run(f"{host}:{port}", device_token=DEVICE)
    assert login.reason == R.UNEXPECTED_RESPONSE and '"password": "***"' in login.detail
    assert device.reason == R.UNEXPECTED_RESPONSE and "/api/v1/***/telemetry" in device.detail
    assert_no_secrets(login, PASSWORD[:5])
    assert_no_secrets(device)


def test_options():
    opts = tbp.Options.parse({"username": USER, "password": PASSWORD, "device_token": DEVICE})
    assert PASSWORD not in repr(opts) and DEVICE not in repr(opts)
    assert PASSWORD not in str(opts.model_dump())
    with pytest.raises(OptionError, match="'password' is missing"):
        tbp.Options.parse({"username": USER})
    with pytest.raises(OptionError, match="'username' is missing"):
        tbp.Options.parse({"password": PASSWORD})
    with pytest.raises(OptionError) as info:
        tbp.Options.parse({"api": "api/auth/user"})
    assert info.value.key == "api"
    with pytest.raises(OptionError, match="unknown option 'token'"):
        tbp.Options.parse({"token": "x"})


def resp(status, body=b"", ct="application/json", reason="", truncated=False):
    return Response(status, reason, "HTTP/1.1", {"content-type": ct}, body, truncated)


def tb_error(status, message, code):
    return json.dumps({"status": status, "message": message, "errorCode": code, "timestamp": 1})


@pytest.mark.parametrize(
    "response,reason,needle",
    [
        (
            resp(401, tb_error(401, "User account is locked due to security policy", 10).encode()),
            R.AUTH_FAILED,
            "'User account is locked due to security policy' (errorCode 10)",
        ),
        (
            resp(401, tb_error(401, "User password expired!", 15).encode()),
            R.AUTH_FAILED,
            "the password has expired",
        ),
        (
            resp(401, b"<html>401 Authorization Required</html>", "text/html"),
            R.UNEXPECTED_RESPONSE,
            "'<html>401 Authorization Required</html>'",
        ),
        (
            resp(429, tb_error(429, "Too many requests for current tenant!", 33).encode()),
            R.REJECTED,
            "rate-limits",
        ),
        (resp(200, b"<html></html>", "text/html"), R.UNEXPECTED_RESPONSE, "200 with text/html"),
        (resp(200, b'{"refreshToken":"r"}'), R.UNEXPECTED_RESPONSE, "without a token (keys: "),
        (
            resp(200, b'{"token":"t","scope":"MFA_CONFIGURATION_TOKEN"}'),
            R.AUTH_FAILED,
            "second factor",
        ),
    ],
)
def test_read_login_shapes(response, reason, needle):
    with pytest.raises(probes.ProbeFailure) as info:
        tbp.read_login(response, USER)
    assert info.value.reason == reason
    assert needle in info.value.detail
    assert '"r"' not in info.value.detail  # a refresh token's value is never shown


@pytest.mark.parametrize(
    "response,reason,needle",
    [
        (
            resp(
                403,
                tb_error(403, "You don't have permission to perform this operation!", 20).encode(),
            ),
            R.REJECTED,
            "may not call it",
        ),
        (
            resp(401, tb_error(401, "Authentication failed", 10).encode()),
            R.AUTH_FAILED,
            "refused the token",
        ),
        (resp(200, b"<html/>", "text/html"), R.UNEXPECTED_RESPONSE, "expected JSON"),
        (resp(200, b"{not json"), R.PROTOCOL_ERROR, "not JSON"),
    ],
)
def test_read_api_shapes(response, reason, needle):
    with pytest.raises(probes.ProbeFailure) as info:
        tbp.read_api(response, "/api/auth/user")
    assert info.value.reason == reason
    assert needle in info.value.detail


def test_read_api_facts():
    body = b'{"authority":"CUSTOMER_USER","tenantId":{"entityType":"TENANT","id":"t-1"}}'
    assert tbp.read_api(resp(200, body), "/x") == {"authority": "CUSTOMER_USER", "tenant_id": "t-1"}
    assert tbp.read_api(resp(200, b"[1,2]"), "/x") == {}
    assert tbp.read_api(resp(200, b'{"trunc', truncated=True), "/x") == {}


def test_check_spa_shapes():
    tbp.check_spa(resp(200, b"<TB-ROOT></TB-ROOT>", "text/html"), "/login")
    tbp.check_spa(resp(200, b"<title> ThingsBoard </title>", "text/html"), "/login")
    with pytest.raises(probes.ProbeFailure, match="to '/sso/login'"):
        r = Response(302, "Found", "HTTP/1.1", {"location": "/sso/login"}, b"", False)
        tbp.check_spa(r, "/login")
    with pytest.raises(probes.ProbeFailure, match="without a title"):
        tbp.check_spa(resp(200, b"<html>hi</html>", "text/html"), "/login")


_bodies = st.one_of(
    st.binary(max_size=200),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    ["token", "scope", "message", "errorCode", "authority", "tenantId", "id"]
                ),
                inner,
                max_size=4,
            )
        ),
        max_leaves=8,
    ).map(lambda doc: json.dumps(doc).encode()),
)


@settings(max_examples=300, deadline=None)
@given(
    status=st.sampled_from([200, 302, 401, 403, 404, 429, 500, 502]),
    body=_bodies,
    ct=st.sampled_from(["application/json", "text/html", "", "application/problem+json"]),
    truncated=st.booleans(),
)
def test_fuzz_readers_raise_only_probe_failure(status, body, ct, truncated):
    response = resp(status, body, ct, truncated=truncated)
    for read in (
        lambda: tbp.read_login(response, USER),
        lambda: tbp.read_api(response, "/api/auth/user"),
        lambda: tbp.read_telemetry(response),
        lambda: tbp.check_spa(response, "/login"),
    ):
        try:
            read()
        except probes.ProbeFailure as exc:
            assert exc.reason in R and exc.detail


async def test_standin_script_mode_serves_the_probe_and_exits_on_sigterm():
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(STANDIN),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--user",
        USER,
        "--password",
        PASSWORD,
        "--device-token",
        DEVICE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("ready 127.0.0.1:"), line
        target = line.split()[1]
        result = await run(target, username=USER, password=PASSWORD, device_token=DEVICE)
        assert result.ok, result
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
