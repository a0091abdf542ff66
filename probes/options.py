"""Probe options and targets: parsed once, before any packet is sent.

Each probe kind declares its options as a ``ProbeOptions`` subclass. The same
model validates ``--set KEY=VALUE`` on the command line (strings, coerced) and
the ``options:`` block of the daemon's config (typed YAML). Unknown keys are
rejected. Secrets are ``SecretStr`` so they never show in a repr or a log.

Errors here are the *user's* errors (usage or config), raised as
``OptionError`` with a sentence naming the key; they are never peer behaviour.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError


def quote(value: Any, limit: int = 40) -> str:
    """A value the user gave, for an error message: a string quoted and cut
    to ``limit`` characters (control characters escaped, so the message stays
    one line), a number cut likewise, anything else named by its type only.
    Never the whole of an unbounded value."""
    if isinstance(value, str):
        text = value[:limit]
        if not text.isprintable():
            text = text.encode("unicode_escape").decode("ascii")[:limit]
        return f"'{text}…'" if len(value) > limit else f"'{text}'"
    if value is None or isinstance(value, bool | float):
        return str(value)[:limit]
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 128 else "a number too large to show"
    names: dict[type, str] = {dict: "a mapping", list: "a list", tuple: "a list"}
    return names.get(type(value), f"a value of type {type(value).__name__[:limit]}")


class OptionError(ValueError):
    """A probe option or target is invalid. The message names the key."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ProbeOptions(BaseModel):
    """Base of every probe's options: frozen, unknown keys rejected."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, allow_inf_nan=False
    )

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> Self:
        try:
            return cls.model_validate(dict(raw or {}))
        except ValidationError as exc:
            raise option_error(cls, exc) from None


def option_error(model: type[BaseModel], exc: ValidationError) -> OptionError:
    """One sentence for the first problem, naming the key and what is allowed.
    An ``OptionError`` raised by a validator is the sentence itself."""
    errors = exc.errors(include_input=False)
    for e in errors:
        cause = e.get("ctx", {}).get("error")
        if isinstance(cause, OptionError):
            return OptionError(str(cause), cause.key)
    err = errors[0]
    key = ".".join(quote(str(p), 64)[1:-1] for p in err["loc"]) or "?"
    if err["type"] == "extra_forbidden":
        known = ", ".join(sorted(model.model_fields)) or "none"
        return OptionError(f"unknown option '{key}' (known: {known})", key)
    return OptionError(f"option '{key}': {err['msg']}", key)


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _check_port(text: str, target: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise OptionError(f"target {quote(target)}: port must be a number from 1 to 65535")
    return int(text)


# The parsers below are pure, take hashable arguments and return frozen values,
# and run for every probe with one of a few targets: cached.
@functools.lru_cache(maxsize=8192)
def parse_hostport(target: str, default_port: int | None) -> HostPort:
    """``host``, ``host:port``, ``[v6]:port``, bare ``v6``, or a URL's netloc."""
    text = target.strip()
    if "://" in text:
        parts = urlsplit(text)
        text = parts.netloc.rsplit("@", 1)[-1]
    if not text:
        raise OptionError(f"target {quote(target)}: empty host")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise OptionError(f"target {quote(target)}: missing ']' after an IPv6 address")
        port = _check_port(rest[1:], target) if rest.startswith(":") else default_port
    elif text.count(":") > 1:
        host, port = text, default_port  # a bare IPv6 address
    elif ":" in text:
        host, _, port_text = text.partition(":")
        port = _check_port(port_text, target)
    else:
        host, port = text, default_port
    if not host:
        raise OptionError(f"target {quote(target)}: empty host")
    if ":" in host or text.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise OptionError(
                f"target {quote(target)}: {quote(host)} is not an IPv6 address"
            ) from None
    if port is None:
        raise OptionError(f"target {quote(target)}: a port is required (host:port)")
    return HostPort(host, port)


@functools.lru_cache(maxsize=8192)
def parse_host(target: str) -> str:
    """A bare host (for ICMP): ``host``, ``[v6]`` or ``v6``; no port allowed."""
    text = target.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text or "/" in text or (text.count(":") == 1):
        raise OptionError(f"target {quote(target)}: expected a host name or IP address, no port")
    return text


@dataclass(frozen=True, slots=True)
class Url:
    scheme: str
    host: str
    port: int
    path: str  # path and query, at least "/"

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme in ("https", "wss") else 80
        return host if self.port == default else f"{host}:{self.port}"

    def origin(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    def __str__(self) -> str:
        return f"{self.origin()}{self.path}"


@functools.lru_cache(maxsize=8192)
def parse_url(target: str, default_port: int, *, tls: bool = False) -> Url:
    """A URL (http/https/ws/wss), or ``host:port`` taken as its origin."""
    text = target.strip()
    if "://" not in text:
        hp = parse_hostport(text, default_port)
        return Url("https" if tls else "http", hp.host, hp.port, "/")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "ws", "wss"):
        raise OptionError(f"target {quote(target)}: scheme must be http, https, ws or wss")
    secure = scheme in ("https", "wss")
    hp = parse_hostport(parts.netloc, 443 if secure else 80)
    scheme = "https" if secure else "http"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Url(scheme, hp.host, hp.port, path)
