"""``thingsboard``: ThingsBoard's web app, and optionally a login, an API call
and device telemetry.

Depth grows with the options given (wire facts: PROTOCOLS.md section 4):

1. Always, phase ``liveness``: ``GET /login`` must be 200 ``text/html`` and
   be ThingsBoard's single-page app (``<tb-root>`` or the ThingsBoard
   title). It needs no database, so it proves the JVM and its web server.
   A load balancer's JSON page, a proxy's 502 or another product's login
   page fail here, each with its own sentence.
2. With ``username``/``password``, phases ``login`` and ``api``:
   ``POST /api/auth/login`` must return a JWT (proves the database and the
   user service), then ``GET <api>`` with ``X-Authorization: Bearer <jwt>``
   must be 200 JSON. Use a dedicated low-privilege user without 2FA, and
   never a wrong password on purpose: TB may lock the account.
3. With ``device_token``, phase ``telemetry``: ``POST
   /api/v1/<token>/telemetry`` with a small JSON body must be 200 (proves
   the device transport and the queue).

The target's path is ignored: ThingsBoard serves from the root; use
``login_path`` and ``api`` for anything else. One keep-alive connection is
used for all requests of a probe (a new one if the server closes it).
Secrets (password, JWT, device token) never appear in details or facts:
every failure sentence is scrubbed of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from typing import Any, Self
from urllib.parse import quote

from pydantic import SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .httpclient import HttpConnection, Response, excerpt
from .options import ProbeOptions, Url, parse_url
from .result import ProbeFailure, ProbeResult, Reason, Trace, entrypoint

MAX_PAGE = 64 * 1024
MAX_JSON = 256 * 1024
TELEMETRY_BODY = b'{"jupiterd_probe":1}'
MFA_SCOPES = frozenset({"PRE_VERIFICATION_TOKEN", "MFA_CONFIGURATION_TOKEN"})

_SPA = re.compile(rb"<tb-root[\s>/]|<title>\s*ThingsBoard\s*</title>", re.IGNORECASE)
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_LOGIN_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
_PAGE_HEADERS = {"Accept": "text/html"}
_TELEMETRY_HEADERS = {"Content-Type": "application/json"}


class Options(ProbeOptions):
    username: str | None = None
    password: SecretStr | None = None
    device_token: SecretStr | None = None
    api: str = "/api/auth/user"  # the authenticated call, after login
    login_path: str = "/login"

    @field_validator("api", "login_path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or any(c.isspace() or c in "\0#" for c in v):
            raise PydanticCustomError(
                "path", "must be a path starting with '/' with no spaces (percent-encode them)"
            )
        return v

    @field_validator("username")
    @classmethod
    def _username(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise PydanticCustomError("username", "must not be empty")
        return v

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.username is None) != (self.password is None):
            missing = "password" if self.password is None else "username"
            raise PydanticCustomError(
                "credentials",
                "username and password go together: '{missing}' is missing",
                {"missing": missing},
            )
        return self


class _Conn:
    """One keep-alive connection for the probe's requests, reopened when the
    server closes it (Connection: close, HTTP/1.0, a truncated body).

    Answers are scrubbed of the probe's secrets before anything quotes them:
    a proxy's error page may echo the request, and scrubbing a sentence
    afterwards would miss a secret its excerpt cut in half."""

    __slots__ = ("conn", "secrets", "trace", "url")

    def __init__(self, trace: Trace, url: Url) -> None:
        self.trace = trace
        self.url = url
        self.conn: HttpConnection | None = None
        self.secrets: list[str] = []

    def add_secret(self, secret: str) -> None:
        # Also as the JSON body and the URL path carry it.
        for form in (secret, json.dumps(secret)[1:-1], quote(secret, safe="")):
            if len(form) >= 3 and form not in self.secrets:  # "a" would mangle every sentence
                self.secrets.append(form)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes = b"",
        max_body: int = MAX_JSON,
    ) -> Response:
        conn = self.conn
        if conn is None or not conn.reusable or conn.reader.at_eof():
            if conn is not None:
                conn.close()
            conn = self.conn = await HttpConnection.open(self.trace, self.url)
        resp = await conn.request(method, path, headers=headers, body=body, max_body=max_body)
        raw = resp.body
        if any(s.encode() in raw for s in self.secrets):
            for secret in self.secrets:
                raw = raw.replace(secret.encode(), b"***")
            resp = dataclasses.replace(resp, body=raw)
        return resp

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _json_object(resp: Response) -> dict[str, Any] | None:
    if resp.truncated:
        return None
    try:
        doc = json.loads(resp.body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _tb_error(resp: Response) -> tuple[str, int | None] | None:
    """ThingsBoard's error body ``{"status","message","errorCode","timestamp"}``."""
    doc = _json_object(resp)
    if doc is None or not isinstance(doc.get("message"), str):
        return None
    code = doc.get("errorCode")
    return doc["message"][:200], code if isinstance(code, int) else None


def _tb_says(resp: Response) -> str:
    """What the answer says, for a detail: TB's message, else an excerpt."""
    err = _tb_error(resp)
    if err is not None:
        message, code = err
        return f"'{message}' (errorCode {code})" if code is not None else f"'{message}'"
    return f"'{excerpt(resp.body)}'" if resp.body else "an empty body"


def check_spa(resp: Response, path: str) -> None:
    """Raise unless ``resp`` is ThingsBoard's single-page app."""
    expected = "expected 200 with ThingsBoard's web app"
    if resp.status != 200:
        where = resp.headers.get("location")
        to = f" to '{excerpt(where.encode('latin-1', 'replace'))}'" if where else ""
        raise ProbeFailure(
            Reason.UNEXPECTED_RESPONSE,
            f"GET {path} answered {resp.status_line}{to}, {expected}: {_tb_says(resp)}",
        )
    if resp.content_type != "text/html":
        got = resp.content_type or "no Content-Type"
        raise ProbeFailure(
            Reason.UNEXPECTED_RESPONSE,
            f"GET {path} answered 200 with {got}, expected text/html (ThingsBoard's web app): "
            f"'{excerpt(resp.body)}'",
        )
    if _SPA.search(resp.body) is None:
        m = _TITLE.search(resp.body)
        what = f"titled '{excerpt(m[1].strip())}'" if m else "without a title"
        raise ProbeFailure(
            Reason.UNEXPECTED_RESPONSE,
            f"GET {path} answered an HTML page {what} that is not ThingsBoard's web app "
            "(no <tb-root> element, no ThingsBoard title)",
        )


def read_login(resp: Response, username: str) -> str:
    """The access token from ``POST /api/auth/login``, or a failure."""
    what = "POST /api/auth/login"
    if resp.status == 200:
        doc = _json_object(resp)
        if doc is None:
            raise ProbeFailure(
                Reason.UNEXPECTED_RESPONSE,
                f"{what} answered 200 with {resp.content_type or 'no Content-Type'}, "
                f"not ThingsBoard's JSON token pair: '{excerpt(resp.body)}'",
            )
        scope = doc.get("scope")
        if isinstance(scope, str) and scope in MFA_SCOPES:
            raise ProbeFailure(
                Reason.AUTH_FAILED,
                f"ThingsBoard asks '{username}' for a second factor (scope {scope}): "
                "the probe user must not have two-factor authentication; "
                "use a dedicated user without 2FA",
            )
        token = doc.get("token")
        if not isinstance(token, str) or not token:
            keys = ", ".join(sorted(str(k) for k in doc)[:10]) or "none"
            raise ProbeFailure(
                Reason.UNEXPECTED_RESPONSE,
                f"{what} answered 200 without a token (keys: {keys})",
            )
        return token
    err = _tb_error(resp)
    if resp.status == 401 and err is not None:
        message, code = err
        hint = ""
        if code == 15:
            hint = ": the password has expired, set a new one"
        elif code == 45:
            hint = ": the password violates the password policy, set a new one"
        raise ProbeFailure(
            Reason.AUTH_FAILED,
            f"ThingsBoard refused the login of '{username}': '{message}' (errorCode {code}){hint}",
        )
    if resp.status == 429:
        raise ProbeFailure(
            Reason.REJECTED, f"ThingsBoard rate-limits the login of '{username}': {_tb_says(resp)}"
        )
    raise ProbeFailure(
        Reason.UNEXPECTED_RESPONSE,
        f"{what} answered {resp.status_line}, expected 200 with a token: {_tb_says(resp)}",
    )


def read_api(resp: Response, path: str) -> dict[str, Any]:
    """Facts from the authenticated call, or a failure."""
    if resp.status == 200:
        ct = resp.content_type
        if ct != "application/json" and not ct.endswith("+json"):
            raise ProbeFailure(
                Reason.UNEXPECTED_RESPONSE,
                f"GET {path} answered 200 with {ct or 'no Content-Type'}, expected JSON: "
                f"'{excerpt(resp.body)}'",
            )
        if resp.truncated:
            return {}
        try:
            doc = json.loads(resp.body)
        except ValueError:
            raise ProbeFailure(
                Reason.PROTOCOL_ERROR,
                f"GET {path} answered 200 with a body that is not JSON: '{excerpt(resp.body)}'",
            ) from None
        return _user_facts(doc) if isinstance(doc, dict) else {}
    err = _tb_error(resp)
    if resp.status == 401:
        hint = ""
        if err is not None and err[1] == 11:
            hint = " (clock skew, or cluster nodes with different JWT signing keys?)"
        raise ProbeFailure(
            Reason.AUTH_FAILED,
            f"GET {path} refused the token that login had just issued: {_tb_says(resp)}{hint}",
        )
    if resp.status == 403:
        raise ProbeFailure(
            Reason.REJECTED,
            f"GET {path} answered 403: {_tb_says(resp)}; the probe user may not call it "
            "(choose another api or user)",
        )
    raise ProbeFailure(
        Reason.UNEXPECTED_RESPONSE, f"GET {path} answered {resp.status_line}: {_tb_says(resp)}"
    )


def _user_facts(doc: dict[str, Any]) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    authority = doc.get("authority")
    if isinstance(authority, str):
        facts["authority"] = authority[:40]
    tenant = doc.get("tenantId")
    if isinstance(tenant, dict) and isinstance(tenant.get("id"), str):
        facts["tenant_id"] = tenant["id"][:40]
    return facts


def read_telemetry(resp: Response) -> None:
    what = "POST /api/v1/***/telemetry"
    if resp.status == 200:
        return
    if resp.status == 401:
        raise ProbeFailure(
            Reason.AUTH_FAILED,
            f"{what} answered 401: unknown device token (no device has these credentials)",
        )
    if resp.status == 403:
        raise ProbeFailure(
            Reason.REJECTED,
            f"{what} answered 403 {_tb_says(resp)}: the probe device was deleted or blocked",
        )
    raise ProbeFailure(
        Reason.UNEXPECTED_RESPONSE,
        f"{what} answered {resp.status_line}, expected 200: {_tb_says(resp)}",
    )


@entrypoint("thingsboard")
async def probe(trace: Trace, target: str, options: Options, timeout: float) -> ProbeResult:
    url = parse_url(target, 8080)
    password = options.password.get_secret_value() if options.password else ""
    device = options.device_token.get_secret_value() if options.device_token else ""
    conn = _Conn(trace, url)
    conn.add_secret(password)
    conn.add_secret(device)
    step = f"liveness (GET {options.login_path})"
    done = ["web app up"]
    # Our own deadline, a little before the entrypoint's, so a timeout names
    # the step (login, api...) rather than the HTTP client's inner phase.
    margin = min(0.05, timeout / 10)
    try:
        async with asyncio.timeout(timeout - margin):
            with trace.phase("liveness"):
                page = await conn.request(
                    "GET", options.login_path, _PAGE_HEADERS, max_body=MAX_PAGE
                )
                check_spa(page, options.login_path)
            if options.username is not None:
                step = "login (POST /api/auth/login)"
                with trace.phase("login"):
                    body = json.dumps({"username": options.username, "password": password})
                    resp = await conn.request(
                        "POST", "/api/auth/login", _LOGIN_HEADERS, body.encode(), MAX_JSON
                    )
                    jwt = read_login(resp, options.username)
                conn.add_secret(jwt)
                trace.facts["user"] = options.username
                step = f"api (GET {options.api})"
                with trace.phase("api"):
                    headers = {"X-Authorization": f"Bearer {jwt}", "Accept": "application/json"}
                    resp = await conn.request("GET", options.api, headers, max_body=MAX_JSON)
                    trace.facts.update(read_api(resp, options.api))
                role = trace.facts.get("authority")
                done.append(f"logged in as {options.username}" + (f" ({role})" if role else ""))
                done.append(f"GET {options.api} answered 200")
            if device:
                step = "telemetry (POST /api/v1/***/telemetry)"
                with trace.phase("telemetry"):
                    path = f"/api/v1/{quote(device, safe='')}/telemetry"
                    resp = await conn.request(
                        "POST", path, _TELEMETRY_HEADERS, TELEMETRY_BODY, max_body=4096
                    )
                    read_telemetry(resp)
                done.append("device telemetry accepted")
    except TimeoutError:
        raise ProbeFailure(
            Reason.TIMEOUT, f"no answer within {timeout:g} s during {step}"
        ) from None
    except ProbeFailure as exc:
        exc.detail = conn.scrub(exc.detail)
        raise
    finally:
        conn.close()
    return trace.ok(", ".join(done))
