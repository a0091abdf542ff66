"""``http``: one HTTP request with status, header and body assertions.

The generic web check, after blackbox_exporter's http module: a fresh
connection, one request, and the answer judged by its status
(``valid_status``), media type and body. Redirects are not followed: a 3xx
is an answer like any other (allow it with ``valid_status: "2xx,3xx"``).

HTTPS certificates are NOT verified (neither chain nor host name), like
Route 53 health checks: the probe proves the service answers, not who it is.
``server_name`` sets both the TLS SNI and the Host header, for a virtual
host reached by IP address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer, PrivateAttr, field_validator
from pydantic_core import PydanticCustomError

from .httpclient import TOKEN, Response, excerpt, fetch
from .options import ProbeOptions, Url, parse_url
from .result import ProbeFailure, ProbeResult, Reason, Trace, entrypoint

MAX_BODY_LIMIT = 16 * 1024 * 1024

_CLASS = re.compile(r"([1-5])xx")
_RANGE = re.compile(r"(\d{3})-(\d{3})")
_CODE = re.compile(r"\d{3}")


@dataclass(frozen=True, slots=True)
class StatusMatcher:
    """Inclusive status ranges, e.g. ``2xx,301`` -> ((200, 299), (301, 301))."""

    ranges: tuple[tuple[int, int], ...]
    text: str

    def __contains__(self, status: object) -> bool:
        return isinstance(status, int) and any(lo <= status <= hi for lo, hi in self.ranges)

    def __str__(self) -> str:
        return self.text


def parse_status(value: Any) -> StatusMatcher:
    """``"2xx"``, ``"200-399"``, ``"200,204"``, ``200`` or a list of those."""
    if isinstance(value, StatusMatcher):
        return value
    if isinstance(value, bool):  # a bool is an int to Python, never a status
        raise _status_error(value)
    if isinstance(value, int):
        value = str(value)
    elif isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise _status_error(value)
    ranges: list[tuple[int, int]] = []
    parts = [p.strip() for p in value.split(",")]
    for part in parts:
        lowered = part.lower()
        if m := _CLASS.fullmatch(lowered):
            base = int(m[1]) * 100
            ranges.append((base, base + 99))
        elif m := _RANGE.fullmatch(part):
            lo, hi = int(m[1]), int(m[2])
            if not 100 <= lo <= hi <= 599:
                raise _status_error(value, part)
            ranges.append((lo, hi))
        elif _CODE.fullmatch(part) and 100 <= int(part) <= 599:
            ranges.append((int(part), int(part)))
        else:
            raise _status_error(value, part)
    return StatusMatcher(tuple(ranges), ",".join(parts))


def _status_error(value: object, part: object = None) -> PydanticCustomError:
    bad = f" ('{part}' is not one)" if part is not None and part != value else ""
    return PydanticCustomError(
        "valid_status",
        "'{value}' is not a status list: use codes (200,204), ranges (200-399) "
        "or classes (2xx), comma-separated{bad}",
        {"value": str(value)[:60], "bad": bad},
    )


def _check_header_text(kind: str, text: str) -> None:
    if any(c in text for c in "\r\n\0"):
        raise PydanticCustomError("header", "{kind} must not contain CR, LF or NUL", {"kind": kind})


def _compile(pattern: str | None) -> re.Pattern[bytes] | None:
    return None if pattern is None else re.compile(pattern.encode())


class Options(ProbeOptions):
    method: str = "GET"
    path: str | None = None  # overrides the target URL's path (and query)
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    valid_status: Annotated[
        StatusMatcher, BeforeValidator(parse_status), PlainSerializer(str, return_type=str)
    ] = StatusMatcher(((200, 299),), "2xx")
    body_contains: str | None = None
    body_regex: str | None = None
    fail_if_body_regex: str | None = None
    content_type: str | None = None  # expected media type: "application/json", "text/*"
    max_body: int = Field(64 * 1024, ge=0, le=MAX_BODY_LIMIT)
    server_name: str | None = None  # TLS SNI and Host header

    _body_re: re.Pattern[bytes] | None = PrivateAttr(None)
    _fail_re: re.Pattern[bytes] | None = PrivateAttr(None)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if not TOKEN.fullmatch(v):
            raise PydanticCustomError("method", "'{v}' is not an HTTP method", {"v": v[:40]})
        return v.upper()

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or any(c.isspace() for c in v)):
            raise PydanticCustomError(
                "path", "must start with '/' and contain no spaces (percent-encode them)"
            )
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not TOKEN.fullmatch(name):
                raise PydanticCustomError("header", "'{n}' is not a header name", {"n": name[:40]})
            _check_header_text(f"header '{name}'", value)
        return v

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, v: str | None) -> str | None:
        if v is not None:
            _check_header_text("server_name", v)
            if not v or any(c.isspace() for c in v):
                raise PydanticCustomError("server_name", "must be a host name without spaces")
        return v

    @field_validator("content_type")
    @classmethod
    def _content_type(cls, v: str | None) -> str | None:
        if v is None:
            return v
        media = v.split(";", 1)[0].strip().lower()
        kind, sep, sub = media.partition("/")
        if not (sep and TOKEN.fullmatch(kind) and (sub == "*" or TOKEN.fullmatch(sub))):
            raise PydanticCustomError(
                "content_type", "'{v}' is not a media type such as application/json", {"v": v[:40]}
            )
        return media

    @field_validator("body_regex", "fail_if_body_regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        try:
            _compile(v)
        except re.error as exc:
            raise PydanticCustomError(
                "regex", "not a valid regular expression: {err}", {"err": str(exc)}
            ) from None
        return v

    def model_post_init(self, context: Any) -> None:
        # Compiled once per options object, not once per probe.
        self._body_re = _compile(self.body_regex)
        self._fail_re = _compile(self.fail_if_body_regex)


def _media_matches(expected: str, actual: str) -> bool:
    if expected.endswith("/*"):
        return actual.startswith(expected[:-1])
    return actual == expected


def _where(resp: Response) -> str:
    return f" in the first {len(resp.body)} bytes" if resp.truncated else ""


def judge(resp: Response, options: Options) -> str | None:
    """Why ``resp`` is unhealthy, or None. Pure: the tests call it directly."""
    if resp.status not in options.valid_status:
        detail = f"{resp.status_line}, expected {options.valid_status}"
        return f"{detail}: '{excerpt(resp.body)}'" if resp.body else detail
    if options.content_type is not None and not _media_matches(
        options.content_type, resp.content_type
    ):
        got = resp.headers.get("content-type", "")
        shown = f"'{excerpt(got.encode('latin-1', 'replace'))}'" if got else "no Content-Type"
        return f"{resp.status_line} with {shown}, expected {options.content_type}"
    body = resp.body
    if options.body_contains is not None and options.body_contains.encode() not in body:
        return (
            f"body does not contain '{excerpt(options.body_contains.encode())}'{_where(resp)}: "
            f"'{excerpt(body)}'"
        )
    if options._body_re is not None and options._body_re.search(body) is None:
        return (
            f"body does not match body_regex '{options.body_regex}'{_where(resp)}: "
            f"'{excerpt(body)}'"
        )
    if options._fail_re is not None and (m := options._fail_re.search(body)) is not None:
        return (
            f"body matches fail_if_body_regex '{options.fail_if_body_regex}' "
            f"at byte {m.start()}: '{excerpt(body[m.start() :])}'"
        )
    return None


def request_target(target: str, options: Options) -> tuple[Url, str]:
    url = parse_url(target, 80)
    return url, options.path or url.path


@entrypoint("http")
async def probe(trace: Trace, target: str, options: Options, timeout: float) -> ProbeResult:
    url, path = request_target(target, options)
    headers = options.headers
    if options.server_name is not None and not any(k.lower() == "host" for k in headers):
        headers = {"Host": options.server_name, **headers}
    body = options.body.encode() if options.body is not None else b""
    resp = await fetch(
        trace,
        url,
        options.method,
        path=path,
        headers=headers,
        body=body,
        max_body=options.max_body,
        server_name=options.server_name,
    )
    trace.facts.update(
        status=resp.status,
        http_version=resp.version,
        content_type=resp.content_type or None,
        body_bytes=len(resp.body),
    )
    problem = judge(resp, options)
    if problem is not None:
        raise ProbeFailure(Reason.UNEXPECTED_RESPONSE, problem)
    more = " (body truncated)" if resp.truncated else ""
    return trace.ok(f"{options.method} {path} answered {resp.status_line}{more}")
