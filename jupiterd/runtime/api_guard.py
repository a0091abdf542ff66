"""The API's request checks, before any handler runs: the Host must name
this listener, and a state-changing request must carry the API header, no
foreign Origin or Referer, a JSON body or none, and the bearer token when
one is configured (see ``jupiterd.runtime.api``)."""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from aiohttp import web

from jupiterd.config import HttpConfig, is_loopback
from probes.options import OptionError, parse_hostport

# The header every state-changing request must carry. Browsers send custom
# headers cross-site only after a CORS preflight, which is never answered.
API_HEADER = "X-Jupiterd-Request"
SAFE_METHODS = frozenset({"GET", "HEAD"})
MAX_BODY = 64 * 1024


def host_of(value: str) -> str | None:
    """The host name of a Host header (lower case, no port, no brackets),
    or None when it is not ``host[:port]``."""
    text = value.strip()
    if not text or any(c in text for c in "/@?#\\ \t"):
        return None
    try:
        host = parse_hostport(text, 80).host
    except OptionError:
        return None
    return host.rstrip(".").lower()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_allowed(host: str, http: HttpConfig, listen: str) -> bool:
    """DNS rebinding needs a DNS name: IP literals and loopback names are
    fine, other names only the listen address or ``allowed_hosts``."""
    if is_loopback(host) or _is_ip(host):
        return True
    return host in http.allowed_hosts or host == host_of(listen)


def _origin_of(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return parts.netloc.rsplit("@", 1)[-1].lower()


def _bearer(header: str) -> bytes | None:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode("utf-8", "surrogateescape")


def exposed_note(http: HttpConfig) -> str:
    """What to say when the API listens beyond loopback."""
    text = f"http.listen {http.listen} is not loopback: the API is reachable from the network"
    if http.token is None:
        return f"{text}; set http.token or firewall POST /pause and /resume"
    return f"{text}; POST needs http.token, /status and /metrics are open: firewall the port"


class Refused(Exception):
    def __init__(self, status: int, why: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(why)
        self.status, self.why, self.headers = status, why, headers or {}


def check_request(request: web.BaseRequest, http: HttpConfig, listen: str) -> None:
    """Raise Refused when the request may not reach a handler."""
    hosts = request.headers.getall("Host", [])
    if len(hosts) > 1:
        raise Refused(400, "more than one Host header")
    if hosts:
        host = host_of(hosts[0])
        if host is None:
            raise Refused(400, "the Host header is not host[:port]")
        if not host_allowed(host, http, listen):
            raise Refused(
                403,
                f"Host '{host[:100]}' does not name this listener (DNS rebinding is refused); "
                "a name used to reach jupiterd belongs in http.allowed_hosts",
            )
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    if origin is None and "Referer" in request.headers:
        origin = _origin_of(request.headers["Referer"]) or "null"
    elif origin is not None:
        origin = _origin_of(origin) or "null"
    if origin is not None and (not hosts or origin != hosts[0].strip().lower()):
        raise Refused(
            403, f"cross-origin {request.method} refused (Origin or Referer {origin[:100]})"
        )
    if not request.headers.get(API_HEADER):
        raise Refused(
            403,
            f"{request.method} needs the header '{API_HEADER}: 1' "
            "(the jupiterd CLI sends it; it keeps web pages from posting here)",
        )
    if http.token is not None:
        given = _bearer(request.headers.get("Authorization", ""))
        challenge = {"WWW-Authenticate": 'Bearer realm="jupiterd"'}
        if given is None:
            raise Refused(
                401, "this API needs 'Authorization: Bearer TOKEN' (http.token)", challenge
            )
        expected = http.token.get_secret_value().encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, expected):
            raise Refused(401, "the bearer token is not the configured http.token", challenge)
    ctype = request.headers.get("Content-Type", "")
    if request.body_exists and ctype.split(";", 1)[0].strip().lower() != "application/json":
        shown = f"'{ctype[:100]}'" if ctype else "none"
        raise Refused(415, f"the body must be Content-Type: application/json (got {shown})")
