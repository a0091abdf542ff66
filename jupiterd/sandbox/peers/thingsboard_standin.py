"""A ThingsBoard stand-in: the HTTP endpoints a health check touches.

ThingsBoard (a Java/Spring Boot server with a database) cannot be installed
here, so this aiohttp server answers the endpoints that jupiterd's
``thingsboard`` probe and the sandbox use, in ThingsBoard's own shapes:
status codes, JSON field names and order, error bodies, content types and
Spring Security's headers. Sources (thingsboard/thingsboard master, v4.3.x):

- ``/login`` and every other SPA route: ``WebConfig.redirect()`` forwards to
  ``/index.html`` (ui-ngx/src/index.html: ``<title>ThingsBoard</title>``,
  ``<tb-root></tb-root>``, the loading spinner), served as ``text/html``.
- ``POST /api/auth/login``: ``RestLoginProcessingFilter`` +
  ``RestAwareAuthenticationSuccessHandler`` -> 200 ``JwtPair``
  ``{"token","refreshToken"}`` (``@JsonInclude(NON_NULL)``); a user with 2FA
  gets ``{"token","scope":"PRE_VERIFICATION_TOKEN"}`` (no refreshToken).
  Failures go through ``ThingsboardErrorResponseHandler``: 401
  ``{"status":401,"message":"Invalid username or password","errorCode":10,
  "timestamp":…}``; a bad payload -> "Authentication failed"; a GET ->
  "Authentication method not supported".
- JWTs: HS512, claims as ``JwtTokenFactory`` sets them (sub, userId, scopes,
  sessionId, exp, iss "thingsboard.io", iat, firstName, lastName, enabled,
  isPublic, tenantId, customerId).
- ``/api/**`` behind ``JwtTokenAuthenticationProcessingFilter``: the token is
  read from ``X-Authorization`` (or ``Authorization``) after the 7-byte
  "Bearer " prefix. No header -> 401 "Authentication failed" (10); a
  malformed token -> BadCredentialsException -> 401 "Invalid username or
  password" (10); an expired token *or a bad signature* -> 401 "Token has
  expired" (11) (``parseTokenClaims`` maps SignatureException there too).
  A token whose scope may not call the endpoint -> 403 "You don't have
  permission to perform this operation!" (20). Unknown API path -> 404
  ``errorCode`` 32 via ``handleExceptionInternal``.
- ``GET /api/auth/user``: the ``User`` JSON (``AuthController.getUser``).
- ``GET /api/noauth/userPasswordPolicy``: the default ``UserPasswordPolicy``
  of ``DefaultSecuritySettingsService`` (min 6, max 72, nulls included).
- ``POST /api/v1/{token}/telemetry`` (``DeviceApiController``): 200 with an
  empty body; an unknown token -> 401 empty (``DeviceAuthCallback``); a
  device in state "deleted" -> 403 ``Device was deleted!`` (what
  ``HttpSessionListener.onDeviceDeleted`` sends); bad JSON -> 400.

Not reproduced: Tomcat's exact header set beyond those listed (aiohttp adds
its own ``Server`` header, Tomcat sends none) and whether Tomcat appends a
charset to ``application/json`` (the probe ignores media type parameters).

Fault switches (attributes, settable while running, or ``--fault``/``--delay``):
``delay`` seconds before every answer (only for paths starting with
``slow_paths`` if that is set); ``fault`` one of ``FAULTS``:
"db-down" (every API call -> 500 "Database error", errorCode 46),
"foreign-page" (``/login`` -> 200 HTML of another product), "json-page"
(``/login`` -> 200 JSON, like a load balancer's health page), "bad-gateway"
(every request -> 502 HTML from a proxy).

Use: ``async with thingsboard_standin(users={"tenant@x": "pw"}) as tb:``
then ``tb.url``, ``tb.host``, ``tb.port`` (``host, port = tb`` works too).
Script: ``python -m jupiterd.sandbox.peers.thingsboard_standin --host 127.0.0.2 --port
8080 --user tenant@x --password secret --device-token T`` prints
``ready host:port`` and exits cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

FAULTS = ("db-down", "foreign-page", "json-page", "bad-gateway")
NULL_UUID = "13814000-1dd2-11b2-8080-808080808080"  # TB's EntityId.NULL_UUID
ISSUER = "thingsboard.io"
TOKEN_TTL = 9000  # JWT_TOKEN_EXPIRATION_TIME default
REFRESH_TTL = 604800
MFA_TTL = 1800  # pre-verification token lifetime when unset: 30 minutes

# Spring Security's headers on the main filter chain (cacheControl, COOP,
# X-Content-Type-Options, Referrer-Policy per thingsboard.yml) and the CORS
# filter's Vary headers.
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Vary", "Origin"),
    ("Vary", "Access-Control-Request-Method"),
    ("Vary", "Access-Control-Request-Headers"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
    ("Cache-Control", "no-cache, no-store, max-age=0, must-revalidate"),
    ("Pragma", "no-cache"),
    ("Expires", "0"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)

INDEX_HTML = b"""<!doctype html>
<html lang="en" style="width: 100%; height: 100%;">
<head>
  <meta charset="utf-8">
  <title>ThingsBoard</title>
  <base href="/">

  <meta name="viewport" content="width=device-width, initial-scale=1">
  <link rel="icon" type="image/x-icon" href="thingsboard.ico">
  <link rel="stylesheet" href="assets/fonts/material-icons.css" />
  <style type="text/css">
    body, html { height: 100%; overflow: hidden; background-color: #eee; }
    .tb-loading-spinner { margin: auto; position: absolute; top: 0; bottom: 0;
      left: 0; right: 0; width: 136px; height: 30px; text-align: center; }
  </style>
<link rel="stylesheet" href="styles.css"></head>
<body class="tb-default">
  <tb-root></tb-root>
  <div id="tb-loading-spinner" class="tb-loading-spinner">
    <div class="tb-bounce1"></div>
    <div class="tb-bounce2"></div>
    <div class="tb-bounce3"></div>
  </div>
<script src="runtime.js" type="module"></script><script src="polyfills.js" type="module">\
</script><script src="main.js" type="module"></script></body>
</html>
"""

FOREIGN_HTML = b"""<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. Further configuration is required.</p>
</body>
</html>
"""

BAD_GATEWAY_HTML = b"""<html>
<head><title>502 Bad Gateway</title></head>
<body>
<center><h1>502 Bad Gateway</h1></center>
<hr><center>nginx</center>
</body>
</html>
"""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(obj: Any) -> bytes:
    # Jackson writes compact JSON in property order.
    return json.dumps(obj, separators=(",", ":")).encode()


def error_body(status: int, message: str, code: int) -> bytes:
    """``ThingsboardErrorResponse``: status, message, errorCode, timestamp."""
    return _json(
        {
            "status": status,
            "message": message,
            "errorCode": code,
            "timestamp": int(time.time() * 1000),
        }
    )


@dataclass
class User:
    email: str
    password: str
    authority: str = "TENANT_ADMIN"
    two_factor: bool = False
    user_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    tenant_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: int = field(default_factory=lambda: int(time.time() * 1000))

    def as_json(self) -> dict[str, Any]:
        tenant = NULL_UUID if self.authority == "SYS_ADMIN" else self.tenant_id
        return {
            "id": {"entityType": "USER", "id": self.user_id},
            "createdTime": self.created,
            "tenantId": {"entityType": "TENANT", "id": tenant},
            "customerId": {"entityType": "CUSTOMER", "id": NULL_UUID},
            "email": self.email,
            "authority": self.authority,
            "firstName": None,
            "lastName": None,
            "phone": None,
            "version": 1,
            "name": self.email,
            "additionalInfo": {"description": "", "lastLoginTs": self.created},
        }


class _BadToken(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ThingsBoardStandin:
    """The aiohttp application and its state; see the module docstring."""

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        *,
        two_factor: frozenset[str] | set[str] = frozenset(),
        authorities: Mapping[str, str] | None = None,
        device_tokens: Mapping[str, str] | None = None,
        token_ttl: int = TOKEN_TTL,
        delay: float = 0.0,
        fault: str | None = None,
    ) -> None:
        self.users: dict[str, User] = {}
        for email, password in (users or {}).items():
            self.add_user(
                email,
                password,
                authority=(authorities or {}).get(email, "TENANT_ADMIN"),
                two_factor=email in two_factor,
            )
        self.devices: dict[str, str] = dict(device_tokens or {})  # token -> "active"|"deleted"
        self.token_ttl = token_ttl
        self.delay = delay
        self.slow_paths = ""  # only paths starting with this are delayed ("" = all)
        self.fault = fault
        self.secret = os.urandom(64)  # HS512 key, like TB's generated jwt signing key
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.peers: list[Any] = []  # the client address of every request
        self.telemetry: list[tuple[str, Any]] = []
        self.host = ""
        self.port = 0
        self._runner: web.AppRunner | None = None

    def add_user(
        self,
        email: str,
        password: str,
        *,
        authority: str = "TENANT_ADMIN",
        two_factor: bool = False,
    ) -> User:
        user = User(email, password, authority, two_factor)
        self.users[email] = user
        return user

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __iter__(self) -> Iterator[Any]:
        return iter((self.host, self.port))

    # -- JWT -----------------------------------------------------------------

    def mint(self, user: User, scopes: list[str], ttl: int, *, extra: bool = True) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": user.email,
            "userId": user.user_id,
            "scopes": scopes,
            "sessionId": str(uuid.uuid4()),
            "exp": now + ttl,
            "iss": ISSUER,
            "iat": now,
        }
        if extra:
            claims.update(firstName=None, lastName=None, enabled=True, isPublic=False)
        claims["tenantId"] = user.tenant_id
        claims["customerId"] = NULL_UUID
        head = _b64(_json({"alg": "HS512"}))
        body = _b64(_json(claims))
        sig = hmac.new(self.secret, f"{head}.{body}".encode(), hashlib.sha512).digest()
        return f"{head}.{body}.{_b64(sig)}"

    def verify(self, token: str) -> dict[str, Any]:
        parts = token.split(".")
        if len(parts) != 3:
            raise _BadToken("Invalid username or password", 10)  # MalformedJwtException
        head, body, sig = parts
        try:
            claims = json.loads(_unb64(body))
            given = _unb64(sig)
        except ValueError:
            raise _BadToken("Invalid username or password", 10) from None
        if not isinstance(claims, dict):
            raise _BadToken("Invalid username or password", 10)
        want = hmac.new(self.secret, f"{head}.{body}".encode(), hashlib.sha512).digest()
        exp = claims.get("exp")
        if not hmac.compare_digest(given, want) or not isinstance(exp, int) or exp <= time.time():
            raise _BadToken("Token has expired", 11)  # SignatureException | ExpiredJwtException
        return claims

    # -- HTTP ----------------------------------------------------------------

    def respond(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = "application/json",
        *,
        security: bool = True,
    ) -> web.Response:
        resp = web.Response(status=status, body=body)
        if content_type is not None:
            resp.headers["Content-Type"] = content_type
        if security:
            for name, value in SECURITY_HEADERS:
                resp.headers.add(name, value)
        return resp

    def error(self, status: int, message: str, code: int) -> web.Response:
        return self.respond(status, error_body(status, message, code))

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        self.peers.append(
            request.transport.get_extra_info("peername") if request.transport else None
        )
        if self.delay and request.path.startswith(self.slow_paths):
            await asyncio.sleep(self.delay)
        if self.fault == "bad-gateway":
            return self.respond(502, BAD_GATEWAY_HTML, "text/html", security=False)
        response: web.StreamResponse = await handler(request)
        return response

    def _authenticate(self, request: web.Request) -> dict[str, Any]:
        header = request.headers.get("X-Authorization") or request.headers.get("Authorization")
        if not header or not header.strip():
            raise _BadToken("Authentication failed", 10)  # "header cannot be blank!"
        if len(header) < len("Bearer "):
            raise _BadToken("Authentication failed", 10)  # "Invalid authorization header size."
        return self.verify(header[len("Bearer ") :])

    async def spa(self, request: web.Request) -> web.Response:
        if self.fault == "foreign-page":
            return self.respond(200, FOREIGN_HTML, "text/html", security=False)
        if self.fault == "json-page":
            return self.respond(200, b'{"status":"healthy"}', "application/json", security=False)
        return self.respond(200, INDEX_HTML, "text/html")

    async def login(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return self.error(401, "Authentication method not supported", 10)
        if self.fault == "db-down":
            return self.error(500, "Database error", 46)
        try:
            doc = json.loads(await request.read())
            username, password = doc.get("username"), doc.get("password")
        except (ValueError, AttributeError):
            return self.error(401, "Authentication failed", 10)  # Invalid login request payload
        if not isinstance(username, str) or not username.strip() or not password:
            return self.error(401, "Authentication failed", 10)  # not provided
        user = self.users.get(username)
        if user is None or not hmac.compare_digest(str(password), user.password):
            return self.error(401, "Invalid username or password", 10)
        if user.two_factor:
            mfa = self.mint(user, ["PRE_VERIFICATION_TOKEN"], MFA_TTL, extra=False)
            return self.respond(200, _json({"token": mfa, "scope": "PRE_VERIFICATION_TOKEN"}))
        pair = {
            "token": self.mint(user, [user.authority], self.token_ttl),
            "refreshToken": self.mint(user, ["REFRESH_TOKEN"], REFRESH_TTL, extra=False),
        }
        return self.respond(200, _json(pair))

    async def api(self, request: web.Request) -> web.Response:
        try:
            claims = self._authenticate(request)
        except _BadToken as exc:
            return self.error(401, exc.message, exc.code)
        if self.fault == "db-down":
            return self.error(500, "Database error", 46)
        scopes = claims.get("scopes") or []
        path = request.match_info["rest"]
        if path == "auth/user" and request.method == "GET":
            if not set(scopes) & {"SYS_ADMIN", "TENANT_ADMIN", "CUSTOMER_USER"}:
                return self.error(403, "You don't have permission to perform this operation!", 20)
            user = self.users.get(str(claims.get("sub")))
            if user is None:
                return self.error(404, "User with requested id wasn't found!", 32)
            return self.respond(200, _json(user.as_json()))
        return self.error(404, f"No static resource api/{path}.", 32)

    async def password_policy(self, request: web.Request) -> web.Response:
        if self.fault == "db-down":
            return self.error(500, "Database error", 46)
        policy = {
            "minimumLength": 6,
            "maximumLength": 72,
            "minimumUppercaseLetters": None,
            "minimumLowercaseLetters": None,
            "minimumDigits": None,
            "minimumSpecialCharacters": None,
            "allowWhitespaces": True,
            "forceUserToResetPasswordIfNotValid": False,
            "passwordExpirationPeriodDays": None,
            "passwordReuseFrequencyDays": None,
        }
        return self.respond(200, _json(policy))

    async def telemetry_post(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        body = await request.read()
        state = self.devices.get(token)
        if state is None:
            return self.respond(401, content_type=None)
        if state == "deleted":
            return self.respond(403, b"Device was deleted!", "text/plain;charset=UTF-8")
        if self.fault == "db-down":
            return self.respond(500, content_type=None)
        try:
            self.telemetry.append((token, json.loads(body)))
        except ValueError:
            return self.respond(400, content_type=None)
        return self.respond(200, content_type=None)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/api/auth/login", self.login)
        app.router.add_get("/api/noauth/userPasswordPolicy", self.password_policy)
        app.router.add_post("/api/v1/{token}/telemetry", self.telemetry_post)
        app.router.add_route("*", "/api/{rest:.*}", self.api)
        app.router.add_get("/", self.spa)
        app.router.add_get("/{path:(?!api/)[^.]*}", self.spa)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        # In-flight answers (a "slow" fault) must not hold up a test's teardown.
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.host = host
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@contextlib.asynccontextmanager
async def thingsboard_standin(
    users: Mapping[str, str] | None = None, *, host: str = "127.0.0.1", **kwargs: Any
) -> AsyncIterator[ThingsBoardStandin]:
    """A running stand-in on a free loopback port."""
    tb = ThingsBoardStandin(users, **kwargs)
    await tb.start(host, 0)
    try:
        yield tb
    finally:
        await tb.stop()


async def _serve(args: argparse.Namespace) -> None:
    users = {args.user: args.password} if args.user else {}
    tb = ThingsBoardStandin(
        users,
        two_factor={args.user} if args.two_factor and args.user else set(),
        device_tokens={t: "active" for t in args.device_token},
        delay=args.delay,
        fault=args.fault,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await tb.start(args.host, args.port)
    host = f"[{tb.host}]" if ":" in tb.host else tb.host
    print(f"ready {host}:{tb.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await tb.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ThingsBoard stand-in (HTTP endpoints only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--user", help="a tenant admin's e-mail")
    parser.add_argument("--password", default="")
    parser.add_argument("--two-factor", action="store_true", help="the user has 2FA enabled")
    parser.add_argument("--device-token", action="append", default=[], help="repeatable")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--fault", choices=FAULTS, default=None)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
